// The engine backend against engines that go away mid-answer: one whose answers stop after
// their headers (Docker sends a wait's headers at once; an engine that dies or restarts
// mid-call does this to any call), and one that accepts calls and never answers (frozen).
// dockerode's promise for such a call never settled, and whatever awaited it (a run's end, a
// replacement, a shutdown) hung for good.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { EngineUnreachableError } from "../runtime.ts";
import type { RuntimeBackend, SandboxSpec } from "../runtime.ts";
import { fakeEngineBackend } from "../../test/fake-engine.ts";

const HANDLE = { id: "c1", agentId: "a1", labels: { "conductor.user": "1000:1000" } };
const SPEC: SandboxSpec = {
  nodeId: "n1",
  agentId: "a1",
  image: "conductor-agent:dev",
  mounts: [],
  env: {},
  labels: {},
  limits: {},
  network: "none",
  user: "1000:1000",
};

/** Every call the backend makes, each of which must end (rejected) on an engine gone mid-call. */
const CALLS: [string, (b: RuntimeBackend) => Promise<unknown>][] = [
  ["create", (b) => b.create(SPEC)],
  ["start", (b) => b.start(HANDLE)],
  ["exec", (b) => b.exec(HANDLE, { argv: ["true"], env: {}, cwd: "/" })],
  ["stop", (b) => b.stop(HANDLE, 1000)],
  ["destroy", (b) => b.destroy(HANDLE)],
  ["inspect", (b) => b.inspect(HANDLE)],
  ["stats", (b) => b.stats(HANDLE)],
  ["list", (b) => b.list({ "conductor.node": "n1" })],
  ["recover", (b) => b.recover(HANDLE)],
];

describe.each([
  ["cuts every answer after its headers", "cut", 2_000],
  ["never answers", "silent", 4_000],
] as const)("on an engine that %s", (_, mode, boundMs) => {
  const dir = mkdtempSync(path.join(tmpdir(), `engine-${mode}-`));
  const socketPath = path.join(dir, "engine.sock");
  const held = new Set<Socket>();
  const engine = createServer((req, res) => {
    held.add(req.socket);
    if (mode === "silent") return;
    res.writeHead(200, { "Content-Type": "application/json" });
    res.flushHeaders();
    setTimeout(() => req.socket.destroy(), 20);
  });
  const backend = fakeEngineBackend(socketPath, { init: "auto", callTimeoutMs: 1_000 });
  afterAll(async () => {
    await backend.close();
    for (const s of held) s.destroy();
    await new Promise((r) => engine.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  it.each(CALLS)("%s rejects as unreachable instead of hanging", async (_name, call) => {
    if (!engine.listening) await new Promise<void>((r) => engine.listen(socketPath, r));
    const started = Date.now();
    const outcome = await Promise.race([
      call(backend).then(
        () => "resolved",
        (e: unknown) => e,
      ),
      new Promise((r) => setTimeout(() => r("still pending"), boundMs + 3_000)),
    ]);
    expect(outcome).toBeInstanceOf(EngineUnreachableError);
    expect(Date.now() - started).toBeLessThan(boundMs + 1_000);
  });
});

describe("waitForExit", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "engine-wait-"));
  const socketPath = path.join(dir, "engine.sock");
  let waits = 0;
  const engine = createServer((req, res) => {
    if (req.method === "POST" && req.url?.startsWith("/containers/c1/wait")) {
      waits++;
      res.writeHead(200, { "Content-Type": "application/json" });
      res.flushHeaders();
      setTimeout(() => req.socket.destroy(), 20); // gone mid-answer
      return;
    }
    if (req.method === "GET" && req.url?.startsWith("/containers/c1/json")) {
      // Still running at first; stopped once the second wait was cut.
      const running = waits < 2;
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(
        JSON.stringify({
          Id: "c1",
          State: { Running: running, ExitCode: running ? 0 : 137, OOMKilled: false },
          HostConfig: {},
          Config: { Labels: {} },
        }),
      );
      return;
    }
    res.writeHead(404).end();
  });
  afterAll(async () => {
    await new Promise((r) => engine.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  it(
    "goes on past a wait cut after its headers, and reports the end",
    { timeout: 10_000 },
    async () => {
      await new Promise<void>((r) => engine.listen(socketPath, r));
      const backend = fakeEngineBackend(socketPath, { waitRoundMs: 300 });
      try {
        const st = await backend.waitForExit(
          { id: "c1", agentId: "a1", labels: {} },
          AbortSignal.timeout(8000),
        );
        expect(st).toMatchObject({ running: false, exitCode: 137 });
        expect(waits).toBe(2);
      } finally {
        await backend.close();
      }
    },
  );
});
