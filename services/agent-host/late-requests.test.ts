// A request a run leaves on its way, delivered to the model proxy only during the agent's next
// run, is refused there and billed to no one: each run has a key of its own (runs.ts runKey,
// ModelProxy.limit). With the process runtime's forwarder one per agent (an AgentHost running
// as root: plugins/runtime-process/forwarder.ts), connections a run opened and left in the
// forwarder's accept queue are taken after the run has ended; here the forwarder is stopped
// (SIGSTOP) while the run sends, and let go (SIGCONT) once the next run is under way.
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createProcessBackend } from "../../plugins/runtime-process/index.ts";
import type { RuntimeBackend, SandboxHandle } from "../../plugins/runtime.ts";
import { startFakeModel, type FakeModel } from "../../test/fake-model/server.ts";
import { runScript } from "../../test/sandbox-script.ts";
import { createLogger } from "../shared/log.ts";
import { NO_USAGE, startModelProxy, type ModelProxy } from "./model-proxy.ts";

const UID = 61000 + (process.pid % 1000);

describe.runIf(process.getuid?.() === 0)("a run's requests delivered during the next run", () => {
  let dir: string;
  let backend: RuntimeBackend;
  let model: FakeModel;
  let proxy: ModelProxy;
  let h: SandboxHandle;
  let ws: string;
  const refusals: unknown[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "conductor-late-"));
    chmodSync(dir, 0o755);
    model = await startFakeModel();
    const runDir = path.join(dir, "run");
    mkdirSync(runDir, { mode: 0o755 });
    const log = createLogger("debug", {}, (line) => {
      const l = JSON.parse(line) as { msg: string; status?: number };
      if (l.msg === "model proxy: request refused") refusals.push(l.status);
    });
    proxy = await startModelProxy({
      socketPath: path.join(runDir, "model.sock"),
      upstream: model.url,
      apiKey: "sk-the-real-key",
      log,
      owner: { uid: UID, gid: UID },
    });
    backend = createProcessBackend({ stateDir: path.join(dir, "state") });
    ws = path.join(dir, "ws");
    mkdirSync(ws);
    chownSync(ws, UID, UID);
    h = await backend.create({
      ...{ nodeId: `late${process.pid}`, agentId: "a", image: "", labels: {}, limits: {} },
      network: "none",
      mounts: [{ hostPath: ws }, { hostPath: runDir, readOnly: true }],
      env: { CONDUCTOR_MODEL_SOCKET: proxy.socketPath },
      user: `${UID}:${UID}`,
    });
    await backend.start(h);
  });

  afterAll(async () => {
    await backend?.destroy(h);
    await backend?.close();
    await proxy?.close();
    await model?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const run = (script: string) => runScript(backend, h, ws, script);
  const BODY = JSON.stringify({
    model: "m",
    max_tokens: 10,
    messages: [{ role: "user", content: "hi" }],
  });
  /** A shell command that makes one Messages API call with `key` (curl), printing its status. */
  const ask = (key: string) =>
    `curl -s -o /dev/null -w '%{http_code}\\n' -H 'x-api-key: ${key}' ` +
    `-H 'content-type: application/json' --data '${BODY}' http://127.0.0.1:8080/v1/messages`;
  /**
   * A shell command that sends the same call and leaves: written whole, its connection closed
   * after 1 s without an answer, as a run's process that ends leaves what it sent behind.
   */
  const leave = (key: string) => {
    const request =
      `POST /v1/messages HTTP/1.1\\r\\nHost: x\\r\\nx-api-key: ${key}\\r\\n` +
      `content-type: application/json\\r\\ncontent-length: ${BODY.length}\\r\\n\\r\\n${BODY}`;
    return `printf '${request}' | socat -t 1 - TCP:127.0.0.1:8080`;
  };
  /** The agent's forwarder: the oldest socat listening for it (its children are forks). */
  const forwarder = (): number =>
    Number(
      execFileSync("pgrep", ["-o", "-f", `^socat TCP-LISTEN.*${proxy.socketPath}`], {
        encoding: "utf8",
      }).trim(),
    );

  it("refuses them (401) and bills nothing to the next run, which goes on", async () => {
    // Run 1: one call answered, three more left in the forwarder's accept queue as it ends.
    proxy.limit(undefined, "run-1-key");
    expect(await run(ask("run-1-key"))).toEqual(["200"]);
    const socat = forwarder();
    expect(socat).toBeGreaterThan(0);
    process.kill(socat, "SIGSTOP");
    try {
      await run(`for i in 1 2 3; do (${leave("run-1-key")}) & done; wait`);
      proxy.endRun();
      expect(proxy.take()).toMatchObject({ requests: 1 });
      // Run 2 is under way when run 1's requests come through.
      proxy.limit(undefined, "run-2-key");
    } finally {
      process.kill(socat, "SIGCONT");
    }
    await expect.poll(() => refusals, { timeout: 20_000 }).toEqual([401, 401, 401]);
    expect(model.requests).toHaveLength(1);
    expect(proxy.take()).toEqual(NO_USAGE);
    expect(await run(ask("run-2-key"))).toEqual(["200"]);
    expect(model.requests).toHaveLength(2);
    proxy.endRun();
  });
});
