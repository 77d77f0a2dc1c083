// The tracing and metrics interceptors on a real gRPC server over a Unix socket, serving
// grpc.health.v1 (a unary Check and a server-streaming Watch).
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import {
  InMemorySpanExporter,
  SimpleSpanProcessor,
  TracerProvider,
  type ReadableSpan,
} from "@opentelemetry/sdk-trace";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { createLogger } from "./log.ts";
import { createObservability } from "./observability.ts";
import { errorEdge } from "./rpc-interceptors.ts";
import { serveUnix, unixTransport, type UnixServer } from "./transport.ts";

const exporter = new InMemorySpanExporter();
const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });
const registry = new Registry();
let dir: string;
let server: UnixServer;
let client: Client<typeof Health>;

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "rpc-interceptors-"));
  const obs = createObservability({
    tracer: provider.getTracer("test"),
    registry,
    processMetrics: false,
  });
  server = await serveUnix({
    socketPath: path.join(dir, "s.sock"),
    services: [],
    routes: () => {},
    interceptors: obs.serverInterceptors,
  });
  client = createClient(Health, unixTransport(server.socketPath, obs.clientInterceptors));
});

afterAll(async () => {
  await server?.close();
  await provider.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

const spansOf = (method: string, kind: SpanKind) =>
  exporter
    .getFinishedSpans()
    .filter((s) => s.name === `grpc.health.v1.Health/${method}` && s.kind === kind);

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 300 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
}

async function sample(name: string, labels: Record<string, string>): Promise<number> {
  const metric = await registry.getSingleMetric(name)!.get();
  const found = metric.values.find((v) =>
    Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want),
  );
  return found?.value ?? 0;
}

describe("RPC interceptors", () => {
  it("carry the trace across the call: the server span is the client span's child", async () => {
    exporter.reset();
    await client.check({ service: "" });
    const [c] = spansOf("Check", SpanKind.CLIENT);
    const [s] = spansOf("Check", SpanKind.SERVER);
    expect(s!.spanContext().traceId).toBe(c!.spanContext().traceId);
    expect(s!.parentSpanContext?.spanId).toBe(c!.spanContext().spanId);
    expect(s!.attributes).toMatchObject({
      "rpc.system.name": "grpc",
      "rpc.method": "grpc.health.v1.Health/Check",
      "rpc.status_code": "OK",
    });
    expect(s!.status.code).toBe(SpanStatusCode.UNSET);
  });

  it("record a failed call's status: an error for the client, the caller's fault for the server", async () => {
    exporter.reset();
    const err = await client.check({ service: "no.such.Service" }).catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.NotFound);
    const [c] = spansOf("Check", SpanKind.CLIENT);
    const [s] = spansOf("Check", SpanKind.SERVER);
    expect(c!.attributes["rpc.status_code"]).toBe("NOT_FOUND");
    expect(c!.status.code).toBe(SpanStatusCode.ERROR);
    expect(s!.attributes["rpc.status_code"]).toBe("NOT_FOUND");
    expect(s!.status.code).toBe(SpanStatusCode.UNSET);
    expect(
      await sample("conductor_rpc_server_handled_total", { method: "Check", code: "NOT_FOUND" }),
    ).toBe(1);
    expect(
      await sample("conductor_rpc_client_handled_total", { method: "Check", code: "NOT_FOUND" }),
    ).toBe(1);
    expect(
      await sample("conductor_rpc_server_handled_total", { method: "Check", code: "OK" }),
    ).toBe(1);
  });

  it("end a server stream's span when the stream ends, not when the handler starts it", async () => {
    exporter.reset();
    const abort = new AbortController();
    const stream = client.watch({ service: "" }, { signal: abort.signal });
    const it = stream[Symbol.asyncIterator]();
    expect((await it.next()).done).toBe(false);
    server.health.set("", "NOT_SERVING");
    expect((await it.next()).done).toBe(false);
    // Two messages delivered, stream still open: neither span has ended.
    expect(spansOf("Watch", SpanKind.SERVER)).toEqual([]);
    expect(spansOf("Watch", SpanKind.CLIENT)).toEqual([]);
    const secondAt = Date.now();
    abort.abort();
    await it.next().catch(() => undefined);
    await until(() => spansOf("Watch", SpanKind.SERVER).length === 1);
    await until(() => spansOf("Watch", SpanKind.CLIENT).length === 1);
    const [s] = spansOf("Watch", SpanKind.SERVER) as [ReadableSpan];
    const [c] = spansOf("Watch", SpanKind.CLIENT) as [ReadableSpan];
    expect(s.endTime[0] * 1000 + s.endTime[1] / 1e6).toBeGreaterThanOrEqual(secondAt - 1);
    expect(s.parentSpanContext?.spanId).toBe(c.spanContext().spanId);
    expect(s.attributes["rpc.status_code"]).toBe("CANCELLED");
    expect(c.attributes["rpc.status_code"]).toBe("CANCELLED");
    expect(
      await sample("conductor_rpc_server_handled_total", {
        method: "Watch",
        rpc_type: "server_streaming",
        code: "CANCELLED",
      }),
    ).toBe(1);
    server.health.set("", "SERVING");
  });
});

describe("the error edge", () => {
  /** What a stream ending with `error` leaves the edge as, and the levels it logged. */
  async function streamEnding(error: unknown, signal = new AbortController().signal) {
    const lines: string[] = [];
    const edge = errorEdge(createLogger("debug", {}, (l) => void lines.push(l)));
    // eslint-disable-next-line require-yield -- a stream that fails before its first message
    async function* failing(): AsyncGenerator<never> {
      throw error;
    }
    const next = (() => Promise.resolve({ stream: true, message: failing() })) as never;
    const res = (await edge(next)({ signal } as never)) as { message: AsyncIterable<unknown> };
    let thrown: unknown;
    try {
      for await (const _ of res.message);
    } catch (e) {
      thrown = e;
    }
    const levels = lines.map((l) => (JSON.parse(l) as { level: string }).level);
    return { code: ConnectError.from(thrown).code, levels };
  }

  it("answers a fault INTERNAL and logs it at error", async () => {
    expect(await streamEnding(new Error("a bug"))).toEqual({
      code: Code.Internal,
      levels: ["error"],
    });
  });

  it("answers a stream closed under it (the caller left) CANCELED, logged at debug only", async () => {
    for (const code of ["ERR_STREAM_DESTROYED", "ECANCELED", "ERR_STREAM_PREMATURE_CLOSE"]) {
      const gone = Object.assign(new Error("The stream has been destroyed"), { code });
      expect(await streamEnding(gone)).toEqual({ code: Code.Canceled, levels: ["debug"] });
    }
  });

  it("answers whatever fails after the call's deadline with the deadline, not as a fault", async () => {
    const call = new AbortController();
    call.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
    expect(await streamEnding(new Error("write after the end"), call.signal)).toEqual({
      code: Code.DeadlineExceeded,
      levels: ["debug"],
    });
  });
});

describe("the error edge, at a deadline", () => {
  it("answers a unary handler that returned after its deadline DEADLINE_EXCEEDED, not OK", async () => {
    const call = new AbortController();
    call.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
    // A Broker Receive that waited for messages until its signal aborted returns what it has.
    const next = (() => Promise.resolve({ stream: false, message: {} })) as never;
    const answer = errorEdge()(next)({ signal: call.signal } as never);
    await expect(answer).rejects.toMatchObject({ code: Code.DeadlineExceeded });
    // Before its deadline, or cancelled instead, it is answered as it returned.
    const cancelled = new AbortController();
    cancelled.abort(new ConnectError("the call was cancelled", Code.Canceled));
    for (const signal of [new AbortController().signal, cancelled.signal]) {
      await expect(errorEdge()(next)({ signal } as never)).resolves.toMatchObject({
        stream: false,
      });
    }
  });
});
