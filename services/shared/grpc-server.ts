import * as grpc from "@grpc/grpc-js";
import { BaseServerInterceptingCall } from "@grpc/grpc-js/build/src/server-interceptors.js";
import { fromBinary, toBinary, type DescMessage, type Message } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createHandlerContext,
  createMethodImplSpec,
  createServiceImplSpec,
  encodeBinaryHeader,
  type ConnectRouter,
  type ContextValues,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
} from "@connectrpc/connect";
import {
  invokeUnaryImplementation,
  transformInvokeImplementation,
} from "@connectrpc/connect/protocol";

// Serves connect ServiceImpls (the same routes, interceptors and handler context the
// connect-node adapter gives them) over gRPC with @grpc/grpc-js, whose HTTP/2 server costs
// about a third of connect-node's per call (bench/rpc-stacks.ts). Only the gRPC protocol: a
// listener that must also answer Connect or gRPC-Web (the console, TCP) stays on connect-node.

/** The longest deadline a Node timer holds: 2^31 - 1 ms, about 24.8 days. */
export const MAX_DEADLINE_MS = 2 ** 31 - 1;
const TIMEOUT_UNIT_MS: Record<string, number> = {
  H: 3_600_000,
  M: 60_000,
  S: 1000,
  m: 1,
  u: 1e-3,
  n: 1e-6,
};

/**
 * A `grpc-timeout` value (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md) over
 * MAX_DEADLINE_MS as that longest (in seconds); any other value as it is.
 */
export function cappedGrpcTimeout(value: string): string {
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  return m && Number(m[1]) * TIMEOUT_UNIT_MS[m[2]!]! > MAX_DEADLINE_MS
    ? `${Math.floor(MAX_DEADLINE_MS / 1000)}S`
    : value;
}

// grpc-js (1.14.7) arms a call's deadline timer with `ms | 0`: a deadline over MAX_DEADLINE_MS
// wraps negative, Node fires the timer at once, and a call with a 30-day deadline ended
// DEADLINE_EXCEEDED as it began. Its servers here read such a deadline as the longest instead.
// (A grpc-js without this private method is left as it is; grpc-server.test.ts would fail.)
const callProto = BaseServerInterceptingCall.prototype as unknown as {
  handleTimeoutHeader?: (this: unknown, value: unknown) => void;
};
const handleTimeoutHeader = callProto.handleTimeoutHeader;
if (handleTimeoutHeader) {
  callProto.handleTimeoutHeader = function (value) {
    handleTimeoutHeader.call(this, cappedGrpcTimeout(String(value)));
  };
}

/**
 * A request that did not parse as its method's input: answered INTERNAL, as connect-node,
 * grpc-go and grpc-js answer one, saying why.
 */
class Unparsable {
  readonly error: unknown;
  constructor(error: unknown) {
    this.error = error;
  }
}

/** What a call's handler context is made from, besides the call itself. */
export interface GrpcServeOptions {
  /** The largest request message read, in bytes (RESOURCE_EXHAUSTED beyond). */
  readMaxBytes: number;
  interceptors: Interceptor[];
  /** A fresh set of context values for each call (who is calling). */
  contextValues: () => ContextValues;
}

/**
 * A grpc-js Server answering every method the routes register (`router.service`/`router.rpc`),
 * through the same interceptors, in the order connect-node applies them.
 */
export function grpcServer(
  routes: (router: ConnectRouter) => void,
  opts: GrpcServeOptions,
): grpc.Server {
  const server = new grpc.Server({
    "grpc.max_receive_message_length": opts.readMaxBytes,
    // Node's own bound on what a session may buffer (MB); grpc-js lifts it by default.
    "grpc-node.max_session_memory": 10,
    // The wire stays plain: connect-node answered uncompressed too.
    "grpc.default_compression_algorithm": 0,
  });
  for (const spec of recordRoutes(routes)) register(server, spec, opts);
  return server;
}

/** The method implementations a routes function registers, in order. */
function recordRoutes(routes: (router: ConnectRouter) => void): MethodImplSpec[] {
  const specs: MethodImplSpec[] = [];
  const router: ConnectRouter = {
    handlers: [],
    service(service, impl) {
      specs.push(...Object.values(createServiceImplSpec(service, impl).methods));
      return router;
    },
    rpc(method, impl) {
      specs.push(createMethodImplSpec(method, impl));
      return router;
    },
  };
  routes(router);
  return specs;
}

function register(server: grpc.Server, spec: MethodImplSpec, opts: GrpcServeOptions): void {
  const { method } = spec;
  const path = `/${method.parent.typeName}/${method.name}`;
  const serialize = (m: unknown) => {
    const bytes = toBinary(method.output, m as Message);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
  const deserialize = (b: Buffer) => {
    try {
      return fromBinary(method.input, b);
    } catch (e) {
      return new Unparsable(e);
    }
  };
  const context = (call: AnyCall, signal: AbortSignal) =>
    createHandlerContext({
      service: method.parent,
      method,
      protocolName: "grpc",
      requestMethod: "POST",
      url: `http://localhost${path}`,
      timeoutMs: timeoutOf(call),
      requestSignal: signal,
      requestHeader: headersOf(call.metadata),
      contextValues: opts.contextValues(),
    });
  const { interceptors } = opts;
  const invoke = (ctx: Context, input: AsyncIterable<Message>) =>
    transformInvokeImplementation(spec, ctx, interceptors)(input);
  switch (spec.kind) {
    case "unary": {
      const handler: grpc.handleUnaryCall<unknown, unknown> = (call, callback) => {
        const request = call.request;
        if (request instanceof Unparsable) {
          callback(statusOf(unparsable(request, method.input)));
          return;
        }
        const ctx = context(call, cancelled(call));
        reply(
          call,
          ctx,
          invokeUnaryImplementation(spec, ctx, request as Message, interceptors),
          callback,
        );
      };
      server.register(path, handler, serialize, deserialize, "unary");
      return;
    }
    case "server_streaming": {
      const handler: grpc.handleServerStreamingCall<unknown, unknown> = (call) => {
        const request = call.request;
        if (request instanceof Unparsable) {
          call.emit("error", statusOf(unparsable(request, method.input)));
          return;
        }
        const signal = cancelled(call);
        const ctx = context(call, signal);
        respond(call, ctx, invoke(ctx, one(request as Message)), signal).catch(() => undefined);
      };
      server.register(path, handler, serialize, deserialize, "serverStream");
      return;
    }
    case "client_streaming": {
      const handler: grpc.handleClientStreamingCall<unknown, unknown> = (call, callback) => {
        const ctx = context(call, cancelled(call));
        const bad: { error?: ConnectError } = {};
        const response = last(invoke(ctx, parsed(call, method.input, bad))).then((res) => {
          if (bad.error) throw bad.error;
          return res;
        });
        reply(call, ctx, response, callback);
      };
      server.register(path, handler, serialize, deserialize, "clientStream");
      return;
    }
    case "bidi_streaming": {
      const handler: grpc.handleBidiStreamingCall<unknown, unknown> = (call) => {
        const signal = cancelled(call);
        const ctx = context(call, signal);
        const bad: { error?: ConnectError } = {};
        const output = invoke(ctx, parsed(call, method.input, bad));
        respond(call, ctx, output, signal, bad).catch(() => undefined);
      };
      server.register(path, handler, serialize, deserialize, "bidi");
      return;
    }
  }
}

/** Any kind of server call (grpc-js does not export the base type it calls ServerSurfaceCall). */
type AnyCall =
  | grpc.ServerUnaryCall<unknown, unknown>
  | grpc.ServerReadableStream<unknown, unknown>
  | grpc.ServerWritableStream<unknown, unknown>
  | grpc.ServerDuplexStream<unknown, unknown>;
type WritableCall =
  grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

/** A handler context, which the call's end aborts (as connect-node's does), freeing its timer. */
type Context = ReturnType<typeof createHandlerContext>;
const ENDED = new ConnectError("the call has ended", Code.Canceled);

/** Answers a unary or client-streaming call with what `response` settles to. */
function reply(
  call: AnyCall,
  ctx: Context,
  response: Promise<unknown>,
  callback: grpc.sendUnaryData<unknown>,
): void {
  void response.then(
    (res) => {
      answered.add(call);
      sendHeader(call, ctx);
      callback(null, res, metadataOf(ctx.responseTrailer));
      ctx.abort(ENDED);
    },
    (e: unknown) => {
      answered.add(call);
      callback(statusOf(e, ctx));
      ctx.abort(ENDED);
    },
  );
}

/**
 * Writes a stream's responses one at a time as the call takes them, then its trailers or its
 * error; never rejects.
 */
async function respond(
  call: WritableCall,
  ctx: Context,
  output: AsyncIterable<unknown>,
  signal: AbortSignal,
  bad: { error?: ConnectError } = {},
): Promise<void> {
  try {
    let first = true;
    for await (const m of output) {
      if (first) sendHeader(call, ctx);
      first = false;
      await sent(call, m, signal);
      if (signal.aborted) break; // cancelled: nothing more can go, and the handler is told
    }
    if (bad.error) throw bad.error;
    // A handler that ended because its deadline passed (its signal said so) did not succeed.
    if (ctx.signal.aborted) throw ctx.signal.reason;
    if (first) sendHeader(call, ctx);
    answered.add(call);
    call.end(metadataOf(ctx.responseTrailer));
  } catch (e) {
    answered.add(call);
    if (!call.cancelled) call.emit("error", statusOf(e, ctx));
  } finally {
    ctx.abort(ENDED);
  }
}

/** The last of an iterable's values (a client-streaming call's one response). */
async function last(values: AsyncIterable<unknown>): Promise<unknown> {
  let value: unknown;
  for await (const v of values) value = v;
  return value;
}

/**
 * Writes one message and resolves once grpc-js has handed it to the HTTP/2 stream (which waits
 * for the reader's flow-control window), or once the call is cancelled (grpc-js then drops the
 * write without a word). One message in flight a stream, as connect-node kept it: a reader that
 * stops reading holds one message, not the Writable's sixteen.
 */
function sent(call: WritableCall, message: unknown, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return resolve();
    const cancelled = () => resolve();
    signal.addEventListener("abort", cancelled, { once: true });
    call.write(message, (e?: Error | null) => {
      signal.removeEventListener("abort", cancelled);
      if (e) reject(e);
      else resolve();
    });
  });
}

/**
 * Calls whose status went out: grpc-js tells every call "cancelled" when its HTTP/2 stream
 * closes, answered or not, and an error made for each (its stack captured) cost ~1% of a busy
 * Broker's CPU.
 */
const answered = new WeakSet<AnyCall>();

/**
 * A signal aborted when grpc-js ends the call early: DEADLINE_EXCEEDED once its
 * deadline has passed (grpc-js's timer may fire before the handler context's), else CANCELED
 * (the client cancelled, went away, or the server is shutting down).
 */
function cancelled(call: AnyCall): AbortSignal {
  const abort = new AbortController();
  (call as NodeJS.EventEmitter).once("cancelled", () =>
    answered.has(call)
      ? undefined
      : abort.abort(
          deadlineOf(call) <= Date.now()
            ? new ConnectError("the call's deadline passed", Code.DeadlineExceeded)
            : new ConnectError("the client cancelled the call", Code.Canceled),
        ),
  );
  return abort.signal;
}

async function* one(value: Message): AsyncIterable<Message> {
  yield value;
}

/**
 * A stream's requests, ending at the first that did not parse, whose error goes to `bad` (the
 * call then ends with it, past the interceptors: a client's junk is not a server failure to
 * log). The call's own iterator is not returned, which would destroy it before its status.
 */
async function* parsed(
  call: grpc.ServerReadableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>,
  input: DescMessage,
  bad: { error?: ConnectError },
): AsyncIterable<Message> {
  const requests = (call as AsyncIterable<Message | Unparsable>)[Symbol.asyncIterator]();
  for (;;) {
    const next: IteratorResult<Message | Unparsable> = await requests.next();
    if (next.done) return;
    const value = next.value;
    if (value instanceof Unparsable) {
      bad.error = unparsable(value, input);
      return;
    }
    yield value;
  }
}

function unparsable(u: Unparsable, input: DescMessage): ConnectError {
  const why = u.error instanceof Error ? u.error.message : String(u.error);
  return new ConnectError(
    `parse binary: ${why} (the request is not a ${input.typeName})`,
    Code.Internal,
  );
}

/** A call's deadline as the milliseconds left (connect's timeoutMs), if it has one. */
function timeoutOf(call: AnyCall): number | undefined {
  const at = deadlineOf(call);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : undefined;
}

/** A call's deadline in ms since the epoch; Infinity when it has none. */
function deadlineOf(call: AnyCall): number {
  const deadline = call.getDeadline();
  return deadline instanceof Date ? deadline.getTime() : deadline;
}

/** Request metadata as connect's request headers (binary values base64, as connect gives them). */
function headersOf(metadata: grpc.Metadata): Headers {
  const headers = new Headers();
  for (const [key, values] of Object.entries(metadata.toJSON())) {
    for (const v of values) {
      headers.append(key, typeof v === "string" ? v : encodeBinaryHeader(new Uint8Array(v)));
    }
  }
  return headers;
}

function metadataOf(headers: Headers): grpc.Metadata {
  const md = new grpc.Metadata();
  for (const [key, value] of headers) {
    if (key.endsWith("-bin")) md.add(key, Buffer.from(value, "base64"));
    else md.add(key, value);
  }
  return md;
}

function sendHeader(call: AnyCall, ctx: HandlerContext): void {
  if (ctx.responseHeader.keys().next().done) return;
  call.sendMetadata(metadataOf(ctx.responseHeader));
}

/** The gRPC status an error ends a call with: a ConnectError's code, message and metadata. */
function statusOf(e: unknown, ctx?: HandlerContext): grpc.StatusObject {
  const err = ConnectError.from(e);
  const trailer = new Headers(ctx?.responseTrailer);
  err.metadata.forEach((value, key) => trailer.append(key, value));
  // connect's codes are gRPC's, by number.
  return { code: err.code as number, details: err.rawMessage, metadata: metadataOf(trailer) };
}
