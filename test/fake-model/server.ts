// A scriptable fake of the Anthropic Messages API for driving the real Claude Code CLI in
// tests (ANTHROPIC_BASE_URL=<url>). Scripts live in the prompt; see script.ts and
// docs/notes/fake-model.md. Listens on loopback only.
import http from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import {
  asMessagesBody,
  classify,
  countFollowUps,
  countToolResults,
  lastToolResult,
  scriptOf,
  workingDirectory,
  type RequestKind,
} from "./request.ts";
import {
  DEFAULT_MAIN_TEXT,
  EXHAUSTED_TEXT,
  errorBody,
  replyFor,
  textReply,
  writeJson,
  writeReply,
  type Reply,
} from "./respond.ts";
import { DEFAULT_USAGE, failingError, fillToolResult, ScriptError, type Step } from "./script.ts";

/** Where to listen; port 0 (the default) picks a free one. */
export interface FakeModelOptions {
  port?: number;
  host?: string; // default 127.0.0.1
}

/** One request as received, kept so tests can assert what the CLI sent and when. */
export interface RecordedRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
  /** Set for POST /v1/messages: how the fake classified it (see request.ts). */
  kind?: RequestKind;
  /** For scripted agent-loop requests: the step index answered (= tool results so far). */
  step?: number;
  /** Date.now() when the body had arrived, and when the answer's first byte was sent. */
  receivedAt: number;
  respondedAt?: number;
  status?: number;
}

/** A running fake; `await using` closes it. */
export interface FakeModel extends AsyncDisposable {
  url: string; // e.g. http://127.0.0.1:41234
  requests: RecordedRequest[]; // every request received, in order
  /**
   * Resolves with the first recorded request matching `pred`, re-checked when a request
   * arrives, is classified, gets its step and is answered; rejects if the fake closes first.
   * Lets tests synchronise on the server instead of sleeping.
   */
  waitFor(pred: (r: RecordedRequest) => boolean): Promise<RecordedRequest>;
  close(): Promise<void>; // also closes open keep-alive sockets promptly
}

/** Starts the fake on loopback and resolves once it is listening. */
export async function startFakeModel(opts: FakeModelOptions = {}): Promise<FakeModel> {
  const host = opts.host ?? "127.0.0.1";
  const requests: RecordedRequest[] = [];
  const waiters: {
    pred: (r: RecordedRequest) => boolean;
    resolve: (r: RecordedRequest) => void;
    reject: (e: Error) => void;
  }[] = [];
  const failCounts = new Map<string, number>(); // fail_times bookkeeping, by step id
  const closing = new AbortController();

  /** Re-checks waiters; called whenever a record is added or changes (kind, step, answer). */
  const notify = (rec: RecordedRequest) => {
    for (const w of waiters.filter((w) => w.pred(rec))) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(rec);
    }
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      let body: unknown = text === "" ? undefined : text;
      try {
        if (text !== "") body = JSON.parse(text);
      } catch {
        // keep the raw text
      }
      const rec: RecordedRequest = {
        method: req.method ?? "GET",
        path: req.url ?? "/",
        headers: req.headers,
        body,
        receivedAt: Date.now(),
      };
      requests.push(rec);
      notify(rec);
      route(rec, res)
        .catch((e: unknown) => {
          if (!res.headersSent && !res.destroyed) {
            send(rec, res, 500, errorBody({ type: "api_error", message: String(e) }));
          }
        })
        .finally(() => notify(rec));
    });
  });

  const send = (rec: RecordedRequest, res: http.ServerResponse, status: number, json: unknown) =>
    stamp(rec, status, writeJson(res, status, json));
  const sendReply = (
    rec: RecordedRequest,
    res: http.ServerResponse,
    reply: Reply,
    model: string,
    stream: boolean,
  ) => stamp(rec, 200, writeReply(res, reply, model, stream));

  async function route(rec: RecordedRequest, res: http.ServerResponse): Promise<void> {
    const pathname = rec.path.split("?")[0] ?? "/";
    if (rec.method === "HEAD") return send(rec, res, 200, undefined);
    if (rec.method === "POST" && pathname === "/v1/messages/count_tokens") {
      const size = JSON.stringify(rec.body ?? "").length;
      return send(rec, res, 200, { input_tokens: Math.max(1, Math.ceil(size / 4)) });
    }
    if (rec.method === "POST" && pathname === "/v1/messages") return answerMessages(rec, res);
    if (rec.method === "GET" && pathname === "/v1/models") {
      return send(rec, res, 200, { data: [], has_more: false, first_id: null, last_id: null });
    }
    if (rec.method === "GET") return send(rec, res, 200, {});
    const message = `fake-model: no route for ${rec.method} ${pathname}`;
    return send(rec, res, 404, errorBody({ type: "not_found_error", message }));
  }

  async function answerMessages(rec: RecordedRequest, res: http.ServerResponse): Promise<void> {
    const body = asMessagesBody(rec.body);
    const model = typeof body.model === "string" ? body.model : "claude-fake";
    const stream = body.stream === true;
    rec.kind = classify(body);
    notify(rec);
    if (rec.kind === "side") {
      return sendReply(rec, res, textReply(DEFAULT_MAIN_TEXT, DEFAULT_USAGE), model, stream);
    }
    let steps: Step[] | undefined;
    try {
      steps = scriptOf(body);
    } catch (e) {
      if (!(e instanceof ScriptError)) throw e;
      const message = `fake-model: bad script: ${e.message}`;
      return send(rec, res, 400, errorBody({ type: "invalid_request_error", message }));
    }
    if (steps === undefined) {
      return sendReply(rec, res, textReply(DEFAULT_MAIN_TEXT, DEFAULT_USAGE), model, stream);
    }
    const index = countToolResults(body) + countFollowUps(body);
    rec.step = index;
    notify(rec);
    const step = steps[index];
    if (step === undefined) {
      return sendReply(rec, res, textReply(EXHAUSTED_TEXT, DEFAULT_USAGE), model, stream);
    }
    if (step.hang) {
      await new Promise((resolve) => closing.signal.addEventListener("abort", resolve));
      return;
    }
    // Loop on the recorded clock: timers may fire a millisecond early against Date.now().
    const deadline = rec.receivedAt + step.delayMs;
    while (Date.now() < deadline) {
      try {
        await sleep(deadline - Date.now(), undefined, { signal: closing.signal });
      } catch {
        return; // server closing
      }
    }
    const error = failingError(step, failCounts);
    if (error !== undefined) return send(rec, res, error.status, errorBody(error));
    const action = fillToolResult(step.action, lastToolResult(body));
    const reply = replyFor(action, workingDirectory(body), step.usage);
    return sendReply(rec, res, reply, model, stream);
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("fake-model: no TCP address");
  const urlHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;

  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= new Promise<void>((resolve) => {
      closing.abort();
      for (const w of waiters.splice(0)) w.reject(new Error("fake-model closed"));
      server.close(() => resolve());
      server.closeAllConnections();
    });
    return closed;
  };

  return {
    url: `http://${urlHost}:${addr.port}`,
    requests,
    waitFor: (pred) => {
      const seen = requests.find(pred);
      if (seen !== undefined) return Promise.resolve(seen);
      if (closing.signal.aborted) return Promise.reject(new Error("fake-model closed"));
      return new Promise((resolve, reject) => waiters.push({ pred, resolve, reject }));
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

function stamp(rec: RecordedRequest, status: number, written: boolean) {
  if (!written) return;
  rec.respondedAt = Date.now();
  rec.status = status;
}
