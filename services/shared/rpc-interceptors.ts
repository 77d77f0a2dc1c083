import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Span,
  type Tracer,
} from "@opentelemetry/api";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  ATTR_ERROR_TYPE,
  ATTR_RPC_METHOD,
  ATTR_RPC_STATUS_CODE,
  ATTR_RPC_SYSTEM_NAME,
  RPC_SYSTEM_NAME_VALUE_GRPC,
} from "@opentelemetry/semantic-conventions";
import { toStatus } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { RpcMetrics } from "./rpc-metrics.ts";

/** gRPC's canonical status names, by code number (what `rpc.status_code` and `code` hold). */
export const GRPC_STATUS_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** Codes that mean the server failed (the others are the caller's doing, per the conventions). */
const SERVER_FAULTS = new Set<number>([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

type Side = "server" | "client";
type AnyResponse = Awaited<ReturnType<Parameters<Interceptor>[0]>>;
type AnyRequest = Parameters<Parameters<Interceptor>[0]>[0];
/** How a call ended: its gRPC status code and the error, if any. */
type Ending = { code: number; error?: ConnectError };

const headerGetter = {
  get: (h: Headers, key: string) => h.get(key) ?? undefined,
  keys: (h: Headers) => [...h.keys()],
};
const headerSetter = { set: (h: Headers, key: string, value: string) => h.set(key, value) };

/**
 * A span per RPC. On the server the span continues the caller's trace (W3C `traceparent` in
 * the request metadata) and is active while the handler runs; on the client it is a child of
 * the active span and its context goes out in the metadata. A server stream's span ends when
 * the stream ends, not when the handler returns.
 */
export function tracingInterceptor(tracer: Tracer, side: Side): Interceptor {
  return (next) => async (req) => {
    const parent =
      side === "server"
        ? propagation.extract(ROOT_CONTEXT, req.header, headerGetter)
        : context.active();
    const method = `${req.service.typeName}/${req.method.name}`;
    const span = tracer.startSpan(
      method,
      {
        kind: side === "server" ? SpanKind.SERVER : SpanKind.CLIENT,
        attributes: {
          [ATTR_RPC_SYSTEM_NAME]: RPC_SYSTEM_NAME_VALUE_GRPC,
          [ATTR_RPC_METHOD]: method,
        },
      },
      parent,
    );
    const ctx = trace.setSpan(parent, span);
    if (side === "client") propagation.inject(ctx, req.header, headerSetter);
    return observe(next, req, side, ctx, (end) => endSpan(span, side, end));
  };
}

/** RPC counts and latencies by service, method and status code. */
export function metricsInterceptor(metrics: RpcMetrics, side: Side): Interceptor {
  const handled = side === "server" ? metrics.serverHandled : metrics.clientHandled;
  const seconds = side === "server" ? metrics.serverSeconds : metrics.clientSeconds;
  return (next) => async (req) => {
    const started = performance.now();
    return observe(next, req, side, undefined, (end) => {
      const labels = {
        service: req.service.typeName,
        method: req.method.name,
        rpc_type: req.method.methodKind,
        code: GRPC_STATUS_NAMES[end.code] ?? String(end.code),
      };
      handled.inc(labels);
      seconds.observe(labels, (performance.now() - started) / 1000);
    });
  };
}

function endSpan(span: Span, side: Side, end: Ending): void {
  const name = GRPC_STATUS_NAMES[end.code] ?? String(end.code);
  span.setAttribute(ATTR_RPC_STATUS_CODE, name);
  if (end.error) {
    if (side === "client" || SERVER_FAULTS.has(end.code)) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: end.error.rawMessage });
      span.setAttribute(ATTR_ERROR_TYPE, name);
    }
    span.recordException(end.error);
  }
  span.end();
}

/**
 * Runs the call (inside `ctx` when given) and reports once how it ended: at once for a
 * unary call, at the end of the response stream for a streaming one.
 */
async function observe(
  next: (req: AnyRequest) => Promise<AnyResponse>,
  req: AnyRequest,
  side: Side,
  ctx: Context | undefined,
  report: (end: Ending) => void,
): Promise<AnyResponse> {
  let done = false;
  const failed = (e: unknown): Ending => {
    const error = ConnectError.from(e);
    return { code: error.code, error };
  };
  // A call aborted (cancelled, deadline) ends there, even if nobody reads the stream again:
  // connect's client answers a read after an abort itself, never reaching this interceptor.
  const onAbort = () => finish(failed(req.signal.reason));
  const finish = (end: Ending) => {
    if (done) return;
    done = true;
    req.signal.removeEventListener("abort", onAbort);
    report(end);
  };
  req.signal.addEventListener("abort", onAbort);
  const within = <T>(fn: () => Promise<T>): Promise<T> => (ctx ? context.with(ctx, fn) : fn());
  let res: AnyResponse;
  try {
    res = await within(() => next(req));
  } catch (e) {
    finish(failed(e));
    throw e;
  }
  if (!res.stream) {
    finish({ code: 0 });
    return res;
  }
  const source = res.message;
  const message: AsyncIterable<unknown> = {
    [Symbol.asyncIterator]() {
      const it = source[Symbol.asyncIterator]();
      return {
        async next() {
          try {
            const r = await within(() => it.next());
            // A server stream that ends because its caller went away was cancelled.
            if (r.done)
              finish({ code: side === "server" && req.signal.aborted ? Code.Canceled : 0 });
            return r;
          } catch (e) {
            finish(failed(e));
            throw e;
          }
        },
        async return(value?: unknown) {
          finish({ code: Code.Canceled });
          return it.return ? within(() => it.return!(value)) : { done: true, value };
        },
        async throw(e?: unknown) {
          finish(failed(e));
          if (it.throw) return within(() => it.throw!(e));
          throw e;
        },
      };
    },
  };
  return { ...res, message } as AnyResponse;
}

/**
 * Node's codes for a stream its other side closed or reset (nodejs.org/api/errors.html, and
 * libuv's ECANCELED for a write pending when an HTTP/2 stream was reset).
 */
const CALLER_GONE = new Set([
  "ERR_STREAM_DESTROYED",
  "ERR_STREAM_PREMATURE_CLOSE",
  "ERR_STREAM_WRITE_AFTER_END",
  "ERR_HTTP2_INVALID_STREAM",
  "ERR_HTTP2_STREAM_ERROR",
  "ERR_HTTP2_STREAM_CANCEL",
  "ECONNRESET",
  "ECANCELED",
  "EPIPE",
]);

/** Whether `e` (or a cause of it, five deep at most) says the call's stream was closed on us. */
function callerGone(e: unknown): boolean {
  for (let i = 0; i < 5 && e instanceof Error; i++, e = e.cause) {
    if (CALLER_GONE.has(String((e as NodeJS.ErrnoException).code))) return true;
  }
  return false;
}

/**
 * The error edge every server has, innermost: whatever a handler throws (or a stream ends
 * with) leaves as `toStatus(error)`. An INTERNAL one is logged with its cause, since the caller
 * sees only "internal error". A call whose handler returned, or a stream it ended, after the
 * call's deadline passed leaves DEADLINE_EXCEEDED. A failure that only says the caller went
 * away (its call cancelled or past its deadline, or its stream closed or reset under a read or
 * write) is no fault of the server's: it leaves CANCELED (or the deadline's status), logged at
 * debug, not error.
 */
export function errorEdge(log?: Logger): Interceptor {
  const map = (e: unknown, signal: AbortSignal): ConnectError => {
    if (!(e instanceof ConnectError) && (signal.aborted || callerGone(e))) {
      log?.debug("call ended by its caller", { error: e });
      const why: unknown = signal.aborted ? signal.reason : undefined;
      return why instanceof ConnectError
        ? why
        : new ConnectError("the caller closed the call", Code.Canceled, undefined, undefined, e);
    }
    const status = toStatus(e);
    if (status.code === Code.Internal && log) {
      log.error("request failed", { error: status.cause ?? e });
    }
    return status;
  };
  return (next) => async (req) => {
    let res: AnyResponse;
    try {
      res = await next(req);
    } catch (e) {
      throw map(e, req.signal);
    }
    // A handler that returned because its signal aborted at the deadline (a Receive that
    // waited for messages) is answered DEADLINE_EXCEEDED, not OK, as grpc-server answers it.
    const passed = (): ConnectError | undefined => {
      const why: unknown = req.signal.aborted ? req.signal.reason : undefined;
      return why instanceof ConnectError && why.code === Code.DeadlineExceeded ? why : undefined;
    };
    if (!res.stream) {
      const deadline = passed();
      if (deadline) throw deadline;
      return res;
    }
    const source = res.message;
    const message: AsyncIterable<unknown> = {
      async *[Symbol.asyncIterator]() {
        try {
          yield* source;
        } catch (e) {
          throw map(e, req.signal);
        }
        // So is a stream its handler ended then (connect-node sends what the handler returns).
        const deadline = passed();
        if (deadline) throw deadline;
      },
    };
    return { ...res, message } as AnyResponse;
  };
}
