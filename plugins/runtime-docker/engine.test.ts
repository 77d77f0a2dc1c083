// waitForExit against an engine whose wait answers its headers and then hangs up (Docker sends
// a wait's headers at once; an engine that goes away mid-wait does this): dockerode's promise
// then never settles, so the round must not wait on it.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createEngineBackend } from "./engine.ts";

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
      const backend = createEngineBackend({
        runtimeName: "docker",
        engineLabel: "the Docker Engine",
        socketPath,
        startHint: "start it",
        init: false,
        waitRoundMs: 300,
      });
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
