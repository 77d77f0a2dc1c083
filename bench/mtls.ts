// Prints what mutual TLS over TCP costs against the Unix socket, measured in the same run on
// loopback: a unary call (GetStats) to the same Orchestrator over each, and task dispatch,
// the wall time of trivial tasks (fake model) through an AgentHost on the Orchestrator's
// socket against one that joined it over TCP with mutual TLS.
// Run: npm run bench:mtls [-- --calls 2000 --tasks 40]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { createClient } from "@connectrpc/connect";
import { OrchestratorService } from "../gen/conductor/v1/orchestrator_pb.js";
import { TaskState } from "../gen/conductor/v1/task_pb.js";
import { tlsTransport } from "../services/shared/tcp.ts";
import { TlsMaterial } from "../services/shared/tls.ts";
import { unixTransport } from "../services/shared/transport.ts";
import { makeCerts, tlsEnv } from "../test/certs.ts";
import { startFakeModel } from "../test/fake-model/server.ts";
import { scripted, spec, startService, waitForEnd, type ServiceProcess } from "../test/harness.ts";

const { values } = parseArgs({
  options: {
    calls: { type: "string", default: "2000" },
    tasks: { type: "string", default: "40" },
    agents: { type: "string", default: "4" },
  },
});
const CALLS = Number(values.calls);
const TASKS = Number(values.tasks);
const AGENTS = String(values.agents);
const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;

await using model = await startFakeModel();
const dir = mkdtempSync(path.join(tmpdir(), "conductor-bench-mtls-"));
const certs = await makeCerts(path.join(dir, "certs"), [
  { role: "orchestrator", name: "orch", ips: ["127.0.0.1"] },
  { role: "agent-host", name: "bench-node" },
  { role: "client", name: "bench" },
]);
const tlsOf = (name: string) => tlsEnv(certs.files(name));
const env = {
  ANTHROPIC_BASE_URL: model.url,
  ANTHROPIC_API_KEY: "sk-bench",
  CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
  CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1",
  CONDUCTOR_OBSERVABILITY_AGENT_HOST_METRICS_PORT: "-1",
  CONDUCTOR_AGENT_BROKER_TOOLS: "false",
};
const where = (name: string) => [
  ...["--socket-dir", path.join(dir, name, "run"), "--data-dir", path.join(dir, name, "data")],
];
const running: ServiceProcess[] = [];

try {
  // One Orchestrator, listening on both; a local AgentHost on its socket folder.
  const orch = await startService("orchestrator", [...where("local"), "--listen", "127.0.0.1:0"], {
    ...env,
    ...tlsOf("orch"),
    CONDUCTOR_ORCHESTRATOR_AGENT_HOSTS: path.join(dir, "local", "run", "agent-host.sock"),
  });
  running.push(orch);
  const socket = path.join(dir, "local", "run", "orchestrator.sock");
  const address = String(orch.ready["listen"]);
  const material = TlsMaterial.load(certs.files("bench"));
  const overUnix = createClient(OrchestratorService, unixTransport(socket));
  const overTls = createClient(
    OrchestratorService,
    tlsTransport(address, material, "orchestrator"),
  );

  // The two alternate call by call, so neither gains from warming up first.
  for (let i = 0; i < 200; i++) await Promise.all([overUnix.getStats({}), overTls.getStats({})]);
  const u: number[] = [];
  const t: number[] = [];
  for (let i = 0; i < CALLS; i++) {
    for (const [client, times] of [
      [overUnix, u],
      [overTls, t],
    ] as const) {
      const t0 = performance.now();
      await client.getStats({});
      times.push(performance.now() - t0);
    }
  }
  material.close();
  console.log(`unary GetStats, ${CALLS} sequential calls on loopback:`);
  console.log(
    `  unix socket   p50 ${pct(u, 0.5).toFixed(3)} ms  p99 ${pct(u, 0.99).toFixed(3)} ms`,
  );
  console.log(
    `  tcp + mTLS    p50 ${pct(t, 0.5).toFixed(3)} ms  p99 ${pct(t, 0.99).toFixed(3)} ms  (${(pct(t, 0.5) / pct(u, 0.5)).toFixed(2)}× the socket's p50)`,
  );

  const dispatch = async () => {
    const prompt = scripted([{ text: "done" }]);
    // Warm-up: every agent runs once.
    await Promise.all(
      Array.from({ length: Number(AGENTS) }, async () => {
        const { task } = await overUnix.submitTask({ spec: spec({ prompt }) });
        await waitForEnd(overUnix, task!.id, 120_000);
      }),
    );
    const t0 = performance.now();
    const ids = await Promise.all(
      Array.from({ length: TASKS }, async () => {
        const { task } = await overUnix.submitTask({ spec: spec({ prompt }) });
        return task!.id;
      }),
    );
    const ended = await Promise.all(ids.map((id) => waitForEnd(overUnix, id, 300_000)));
    const wall = performance.now() - t0;
    if (ended.some((e) => e.state !== TaskState.SUCCEEDED)) throw new Error("a task failed");
    return wall;
  };
  // Dispatch through a local AgentHost (the Orchestrator dials its socket)…
  const local = await startService("agent-host", [...where("local"), "--agents", AGENTS], env);
  running.push(local);
  const localMs = await dispatch();
  await local.stop();
  running.pop();
  // …then through one that joined over TCP with mutual TLS (the same machine, loopback).
  const joined = await startService(
    "agent-host",
    [...where("joined"), "--agents", AGENTS, "--join", address],
    { ...env, ...tlsOf("bench-node") },
  );
  running.push(joined);
  const joinedMs = await dispatch();
  console.log(`task dispatch, ${TASKS} trivial tasks on ${AGENTS} agents (fake model):`);
  console.log(
    `  local socket  ${(localMs / 1000).toFixed(2)} s  ${((TASKS * 1000) / localMs).toFixed(1)} tasks/s`,
  );
  console.log(
    `  joined, mTLS  ${(joinedMs / 1000).toFixed(2)} s  ${((TASKS * 1000) / joinedMs).toFixed(1)} tasks/s  (${(joinedMs / localMs).toFixed(2)}× the local wall time)`,
  );
} finally {
  for (const p of running.reverse()) await p.stop();
  rmSync(dir, { recursive: true, force: true });
}
