import { createConnection } from "node:net";
import type { RequestOptions } from "node:http";

type Callback = (error: unknown, result: unknown) => void;

/** What of docker-modem 5 is changed here (its types call buildRequest private). */
interface ModemInternals {
  buildRequest(
    options: RequestOptions & { signal?: AbortSignal },
    context: unknown,
    data: unknown,
    callback: Callback,
  ): void;
}

/**
 * Makes every call of a dockerode client on a Unix socket settle. docker-modem 5 never calls
 * back (so dockerode's promise neither resolves nor rejects) when a call's connection closes
 * after the answer's headers (the engine died or restarted mid-answer), nor when its
 * abortSignal aborts then: it reads the body without listening for the response's errors, and
 * Node emits none to a response nobody listens to for them. Here a call also ends:
 *
 * - rejected with `ECONNRESET` once its connection has closed and what came before the close
 *   has been handled (a whole answer's end is delivered before then);
 * - rejected with the signal's reason once its abortSignal aborts.
 *
 * A hijacked (exec) or streamed answer settles as before, with its stream, as soon as it
 * starts; that stream's own end is the caller's to watch. Each call has its own connection: a
 * kept-alive one is dead after an engine restart, and the next call written to it would fail
 * (EPIPE) for that alone.
 */
export function settleEveryCall(modem: unknown, socketPath: string): void {
  const m = modem as ModemInternals;
  const build = m.buildRequest.bind(m);
  m.buildRequest = (options, context, data, callback) => {
    let settled = false;
    const signal = options.signal;
    const settle: Callback = (error, result) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener("abort", onAbort);
      callback(error, result);
    };
    const onAbort = () => settle(signal?.reason, null);
    signal?.addEventListener("abort", onAbort, { once: true });
    delete options.agent; // with none, Node dials with createConnection, once per call
    options.createConnection = () => {
      const socket = createConnection({ path: socketPath });
      socket.once("close", () =>
        setImmediate(() => {
          const what = `${options.method ?? "GET"} ${options.path ?? ""}`;
          const error = new Error(`the engine closed the connection before answering ${what}`);
          settle(Object.assign(error, { code: "ECONNRESET" }), null);
        }),
      );
      return socket;
    };
    build(options, context, data, settle);
    if (signal?.aborted) onAbort();
  };
}
