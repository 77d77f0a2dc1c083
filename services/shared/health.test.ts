// grpc.health.v1 against a real HTTP/2 server on a Unix socket.
import { mkdtempSync, rmSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import {
  Health,
  HealthCheckResponse_ServingStatus as S,
} from "../../gen/grpc/health/v1/health_pb.js";
import { HealthRegistry, registerHealth } from "./health.ts";

let dir: string;
let server: http2.Http2Server;
const sessions = new Set<http2.ServerHttp2Session>();
const health = new HealthRegistry();
let client: Client<typeof Health>;

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "health-test-"));
  const socket = path.join(dir, "s.sock");
  server = http2.createServer(connectNodeAdapter({ routes: (r) => registerHealth(r, health) }));
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  client = createClient(
    Health,
    createGrpcTransport({
      baseUrl: "http://localhost",
      nodeOptions: { createConnection: () => net.connect(socket) },
    }),
  );
});

afterAll(async () => {
  for (const s of sessions) s.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
});

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
}

describe("Health", () => {
  it("reports the overall server as SERVING from the start", async () => {
    expect((await client.check({})).status).toBe(S.SERVING);
  });

  it("answers NOT_FOUND for an unknown service", async () => {
    const err = await client.check({ service: "nope.v1.Nope" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.NotFound);
  });

  it("reflects set() in Check and List", async () => {
    health.set("conductor.v1.OrchestratorService", "NOT_SERVING");
    const res = await client.check({ service: "conductor.v1.OrchestratorService" });
    expect(res.status).toBe(S.NOT_SERVING);
    const list = await client.list({});
    expect(list.statuses[""]?.status).toBe(S.SERVING);
    expect(list.statuses["conductor.v1.OrchestratorService"]?.status).toBe(S.NOT_SERVING);
  });

  it("streams the current status then each change, and cleans up on cancel", async () => {
    const abort = new AbortController();
    const stream = client.watch({ service: "w.v1.W" }, { signal: abort.signal });
    const it = stream[Symbol.asyncIterator]();
    const next = async () => {
      const r = await it.next();
      if (r.done === true) throw new Error("stream ended early");
      return r.value.status;
    };
    expect(await next()).toBe(S.SERVICE_UNKNOWN);
    await until(() => health.listenerCount === 1);
    health.set("w.v1.W", "SERVING");
    expect(await next()).toBe(S.SERVING);
    health.set("other", "NOT_SERVING"); // not ours: no message
    health.set("w.v1.W", "SERVING"); // no change: no message
    health.set("w.v1.W", "NOT_SERVING");
    expect(await next()).toBe(S.NOT_SERVING);
    abort.abort();
    await expect(it.next()).rejects.toMatchObject({ code: Code.Canceled });
    await until(() => health.listenerCount === 0);
  });

  it("shutdown() flips every service to NOT_SERVING", async () => {
    const local = new HealthRegistry();
    local.set("a", "SERVING");
    local.shutdown();
    expect(local.entries()).toEqual([
      ["", "NOT_SERVING"],
      ["a", "NOT_SERVING"],
    ]);
  });
});
