// serveUnix's gRPC server (grpc-server.ts: connect handlers on @grpc/grpc-js) keeps what the
// services rely on from connect-node: cancellation and deadlines reach the handler's signal,
// interceptors see the caller's metadata, and errors, headers and trailers reach the client.
import { mkdtempSync, rmSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as grpc from "@grpc/grpc-js";
import {
  Code,
  ConnectError,
  createClient,
  createContextValues,
  createContextKey,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import {
  Health,
  HealthCheckResponse_ServingStatus as Serving,
} from "../../gen/grpc/health/v1/health_pb.js";
import { MAX_DEADLINE_MS } from "./grpc-server.ts";
import { HealthRegistry } from "./health.ts";
import { createLogger } from "./log.ts";
import {
  rpcHandler,
  serveUnix,
  unixTransport,
  type ServeOptions,
  type UnixServer,
} from "./transport.ts";

const CALLER = createContextKey<string>("", { description: "the caller" });
let dir: string;
let server: UnixServer;
/** What the last handler saw of its context: why its signal aborted, and who called. */
const seen: {
  reason?: unknown;
  caller?: string;
  timeoutMs?: number | undefined;
  waiting?: boolean;
} = {};
let aborted: () => void = () => undefined;
let outputEnded: () => void = () => undefined;
/** What the servers logged (JSON lines). */
const logged: string[] = [];

/** Waits until `ctx.signal` aborts, noting why. */
const untilAborted = (ctx: HandlerContext) =>
  new Promise<void>((resolve) => {
    seen.waiting = true;
    ctx.signal.addEventListener("abort", () => {
      seen.reason = ctx.signal.reason;
      aborted();
      resolve();
    });
  });

/** Takes the caller's name from its `x-caller` header into the context values. */
const whoCalls: Interceptor = (next) => async (req) => {
  req.contextValues.set(CALLER, req.header.get("x-caller") ?? "");
  return await next(req);
};

/** The same service, as both of the services' stacks serve it. */
const served = {
  services: [Health, OrchestratorService],
  interceptors: [whoCalls],
  routes: (router) =>
    router
      .service(Health, {
        async check(req, ctx) {
          seen.caller = ctx.values.get(CALLER);
          seen.timeoutMs = ctx.timeoutMs();
          if (req.service === "fail")
            throw new ConnectError("no such thing", Code.NotFound, { "x-why": "absent" });
          if (req.service === "wait") await untilAborted(ctx);
          ctx.responseHeader.set("x-header", "h");
          ctx.responseTrailer.set("x-trailer", "t");
          return { status: Serving.SERVING };
        },
        async *watch(req, ctx) {
          yield { status: Serving.SERVING };
          await untilAborted(ctx);
        },
      })
      // A stream method of another service: the TCP listeners' stack answers Health itself.
      .service(OrchestratorService, {
        async *watchTasks(_req, ctx) {
          seen.timeoutMs = ctx.timeoutMs();
          yield {};
          await untilAborted(ctx);
        },
        // Output faster than any reader takes it: a write is always waiting for the reader.
        async *getTaskOutput(_req, ctx) {
          try {
            for (let i = 0; i < 64 && !ctx.signal.aborted; i++) yield { text: "x".repeat(1 << 20) };
          } finally {
            outputEnded();
          }
        },
      }),
  log: createLogger("debug", {}, (line) => void logged.push(line)),
} satisfies Omit<ServeOptions, "socketPath">;

/** The TCP listeners' stack (connect-node's handler on node:http2), on a Unix socket here. */
let h2: http2.Http2Server;
let h2Socket: string;

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "grpc-server-test-"));
  server = await serveUnix({ socketPath: path.join(dir, "s.sock"), ...served });
  h2 = http2.createServer(rpcHandler(served, new HealthRegistry(), () => createContextValues()));
  h2Socket = path.join(dir, "h2.sock");
  await new Promise<void>((resolve) => h2.listen(h2Socket, resolve));
});

afterAll(async () => {
  await server.close();
  await new Promise((resolve) => h2.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

/** A stream call (empty request) sent raw, with `grpc-timeout` and no client timer; destroy its session after. */
function rawWatch(
  socketPath: string,
  grpcTimeout: string,
  method = "/grpc.health.v1.Health/Watch",
) {
  // A raw HTTP/2 caller keeps no timer of its own: the status is the server's word alone.
  const session = http2.connect("http://localhost", {
    createConnection: () => net.connect(socketPath),
  });
  const stream = session.request({
    ":method": "POST",
    ":path": method,
    "content-type": "application/grpc",
    te: "trailers",
    "grpc-timeout": grpcTimeout,
  });
  stream.end(Buffer.from([0, 0, 0, 0, 0])); // one empty request
  return { session, stream };
}

/** The trailers of a raw Health/Watch whose deadline is 200 ms. */
async function rawWatchTrailers(socketPath: string): Promise<http2.IncomingHttpHeaders> {
  const { session, stream } = rawWatch(socketPath, "200m");
  try {
    const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) =>
      stream.once("trailers", resolve),
    );
    stream.resume();
    return await trailers;
  } finally {
    session.destroy();
  }
}

const client = () => createClient(Health, unixTransport(server.socketPath));

describe("serveUnix's gRPC server", () => {
  it("gives interceptors the caller's metadata and the handler its context values", async () => {
    let header: Headers | undefined;
    let trailer: Headers | undefined;
    const res = await client().check(
      { service: "" },
      {
        headers: { "x-caller": "tester" },
        onHeader: (h) => (header = h),
        onTrailer: (t) => (trailer = t),
      },
    );
    expect(res.status).toBe(Serving.SERVING);
    expect(seen.caller).toBe("tester");
    expect(seen.timeoutMs).toBeUndefined();
    expect(header?.get("x-header")).toBe("h");
    expect(trailer?.get("x-trailer")).toBe("t");
  });

  it("answers a handler's ConnectError with its code, message and metadata", async () => {
    const err = await client()
      .check({ service: "fail" })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.NotFound, rawMessage: "no such thing" });
    expect((err as ConnectError).metadata.get("x-why")).toBe("absent");
  });

  it("aborts the handler's signal when the caller's deadline passes", async () => {
    const done = new Promise<void>((resolve) => (aborted = resolve));
    const err = await client()
      .check({ service: "wait" }, { timeoutMs: 300 })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.DeadlineExceeded });
    await done;
    expect(ConnectError.from(seen.reason).code).toBe(Code.DeadlineExceeded);
  });

  it("aborts a unary call's signal when the caller cancels it, with CANCELED", async () => {
    const done = new Promise<void>((resolve) => (aborted = resolve));
    const stop = new AbortController();
    seen.waiting = false;
    const call = client().check({ service: "wait" }, { signal: stop.signal });
    for (let i = 0; !seen.waiting && i < 2000; i++) await new Promise((r) => setTimeout(r, 5));
    stop.abort();
    await expect(call).rejects.toMatchObject({ code: Code.Canceled });
    await done;
    expect(ConnectError.from(seen.reason).code).toBe(Code.Canceled);
  });

  it("aborts a stream's signal when the caller cancels it", async () => {
    const done = new Promise<void>((resolve) => (aborted = resolve));
    const stop = new AbortController();
    const it = client().watch({}, { signal: stop.signal })[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done ? undefined : first.value.status).toBe(Serving.SERVING);
    stop.abort();
    await done;
    expect(ConnectError.from(seen.reason).code).toBe(Code.Canceled);
  });

  it("ends a stream DEADLINE_EXCEEDED when its deadline passes, with no client timer", async () => {
    expect((await rawWatchTrailers(server.socketPath))["grpc-status"]).toBe(
      String(Code.DeadlineExceeded),
    );
  });

  it("so does the TCP listeners' stack, whose handler ends the stream at its deadline", async () => {
    expect((await rawWatchTrailers(h2Socket))["grpc-status"]).toBe(String(Code.DeadlineExceeded));
  });

  it("keeps a 30-day deadline (capped at a timer's longest) on both stacks, not ending the call at once", async () => {
    for (const socketPath of [server.socketPath, h2Socket]) {
      seen.timeoutMs = undefined;
      const done = new Promise<void>((resolve) => (aborted = resolve));
      const watchAll = "/conductor.v1.OrchestratorService/WatchTasks";
      const { session, stream } = rawWatch(socketPath, "720H", watchAll);
      try {
        await new Promise((resolve) => stream.once("data", resolve)); // the first message
        // Node fires a timer over 2^31 - 1 ms at once: uncapped, the call ended as it began.
        expect(seen.timeoutMs).toBeGreaterThan(MAX_DEADLINE_MS - 60_000);
        expect(seen.timeoutMs).toBeLessThanOrEqual(MAX_DEADLINE_MS);
        stream.close(http2.constants.NGHTTP2_CANCEL);
        await done;
        expect(ConnectError.from(seen.reason).code).toBe(Code.Canceled);
      } finally {
        session.destroy();
      }
    }
  });

  it("logs no error when a caller cancels while a write waits for it, on both stacks", async () => {
    for (const socketPath of [server.socketPath, h2Socket]) {
      logged.length = 0;
      const ended = new Promise<void>((resolve) => (outputEnded = resolve));
      const output = "/conductor.v1.OrchestratorService/GetTaskOutput";
      const { session, stream } = rawWatch(socketPath, "60S", output);
      try {
        await new Promise((resolve) => stream.once("data", resolve)); // then it reads no more
        stream.close(http2.constants.NGHTTP2_CANCEL);
        await ended;
        // A caller that leaves is no fault of the server's: nothing at error level (operators
        // are paged on those), what happened at debug.
        const levels = logged.map((l) => (JSON.parse(l) as { level: string }).level);
        expect(levels.filter((l) => l === "error" || l === "warn")).toEqual([]);
      } finally {
        session.destroy();
      }
    }
  });

  it("answers a malformed message on a bidi stream at once, INTERNAL, saying why", async () => {
    const raw = new grpc.Client(`unix:${server.socketPath}`, grpc.credentials.createInsecure());
    try {
      const call = raw.makeBidiStreamRequest<Buffer, Buffer>(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        (b) => b,
        (b) => b,
      );
      const status = new Promise<grpc.StatusObject>((resolve) => call.once("status", resolve));
      call.on("data", () => undefined);
      call.on("error", () => undefined);
      call.write(Buffer.from([0x0a, 0x50])); // a string field whose 80 bytes never come
      call.end();
      expect(await status).toMatchObject({ code: Code.Internal, details: /parse binary/ });
    } finally {
      raw.close();
    }
  });

  it("refuses a request over 4 MiB with RESOURCE_EXHAUSTED", async () => {
    const err = await client()
      .check({ service: "x".repeat(5 * 1024 * 1024) })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.ResourceExhausted });
  });
});
