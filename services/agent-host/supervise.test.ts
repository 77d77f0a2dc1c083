// The supervisor against an engine that answers its pings but hangs every other call (a
// wedged engine: its API server up, its container store stuck). The agent is reported lost;
// the healthy pings must not each start one more look at its sandbox, every one of them
// holding a connection to the engine until its timeout.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { afterAll, expect, it } from "vitest";
import { AgentSchema, AgentState } from "../../gen/conductor/v1/agent_pb.js";
import { fakeEngineBackend } from "../../test/fake-engine.ts";
import { silentLogger } from "../shared/log.ts";
import { Supervisor, type Watched } from "./supervise.ts";

const dir = mkdtempSync(path.join(tmpdir(), "supervise-"));
const socketPath = path.join(dir, "engine.sock");
/** Calls the engine holds unanswered now, and the most it ever held. */
let open = 0;
let most = 0;
let inspects = 0;
const held = new Set<ServerResponse>();
const engine = createServer((req, res) => {
  if (req.url?.endsWith("/_ping")) return void res.end("OK");
  if (req.url?.endsWith("/version")) return void res.end(JSON.stringify({ Version: "1" }));
  if (req.url?.endsWith("/info")) return void res.end(JSON.stringify({}));
  if (/\/containers\/[^/]+\/json/.test(req.url ?? "")) inspects++;
  held.add(res);
  most = Math.max(most, ++open);
  res.on("close", () => (open--, held.delete(res)));
});
afterAll(async () => {
  for (const res of held) res.destroy();
  await new Promise((r) => engine.close(r));
  rmSync(dir, { recursive: true, force: true });
});

it(
  "looks at a lost agent's sandbox once at a time, however often the engine pings healthy",
  {
    timeout: 20_000,
  },
  async () => {
    await new Promise<void>((r) => engine.listen(socketPath, r));
    const backend = fakeEngineBackend(socketPath, { callTimeoutMs: 400, waitRoundMs: 200 });
    const slot: Watched = {
      agent: create(AgentSchema, { id: "agent-1", state: AgentState.IDLE }),
      sandbox: { id: "c1", agentId: "agent-1", labels: {} },
      unwatch: new AbortController(),
    };
    let lost = 0;
    const supervisor = new Supervisor<Watched>(
      backend,
      silentLogger,
      { died: () => undefined, lost: () => void lost++ },
      { recheckMs: 100, healthIntervalMs: 25 },
    );
    try {
      await backend.fingerprint(); // version and info read: the probes after are pings
      supervisor.start(() => [slot]);
      supervisor.watch(slot);
      // A look takes 0.5 s (0.4 s timeout, then 0.1 s); pings come every 25 ms meanwhile.
      const started = Date.now();
      for (let i = 0; i < 200 && inspects < 6; i++) await new Promise((r) => setTimeout(r, 50));
      expect(inspects).toBeGreaterThanOrEqual(6);
      expect(Date.now() - started).toBeGreaterThan(2_000); // not one look per ping
      expect(lost).toBe(1);
      expect(slot.agent.state).toBe(AgentState.FAILED);
      expect(most).toBeLessThanOrEqual(2); // one look, and the wait that lost it in its last moments
    } finally {
      supervisor.stop();
      slot.unwatch.abort();
      await backend.close();
    }
  },
);
