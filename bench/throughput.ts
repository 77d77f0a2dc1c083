// Prints: the wall time of one task through Conductor against the same task run by the bare
// CLI (same fake model), and tasks/s for many trivial tasks; and what the process runtime's
// bubblewrap sandbox costs against the same runtime unsandboxed (runtime.process_sandbox:
// none), measured in the same run. Run: npm run bench [-- --tasks 200 --agents 4]
import { chownSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { TaskState } from "../gen/conductor/v1/task_pb.js";
import { createProcessBackend } from "../plugins/runtime-process/index.ts";
import { startFakeModel } from "../test/fake-model/server.ts";
import { runBareCli } from "./bare-cli.ts";
import { ms, scripted, spec, startConductor, waitForEnd, type Conductor } from "../test/harness.ts";

const { values } = parseArgs({
  options: {
    tasks: { type: "string", default: "200" },
    agents: { type: "string", default: "4" },
    runs: { type: "string", default: "10" },
  },
});
const TASKS = Number(values.tasks);
const AGENTS = Number(values.agents);
const RUNS = Number(values.runs);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const prompt = scripted([{ write: { path: "bench.txt", content: "x" } }, { text: "done" }]);

await using model = await startFakeModel();

// The bare CLI, as an AgentHost would run it: one workspace and config folder, reused
// (as an agent reuses its own), after one warm-up run that is not counted.
const bareDir = mkdtempSync(path.join(tmpdir(), "conductor-bench-"));
const bareRun = () => runBareCli(prompt, bareDir, model.url);
await bareRun();
const bare: number[] = [];
for (let i = 0; i < RUNS; i++) {
  const t0 = performance.now();
  await bareRun();
  bare.push(performance.now() - t0);
}
rmSync(bareDir, { recursive: true, force: true });

/** One Conductor: the single-task median, then tasks/s for TASKS trivial tasks at once. */
async function measure(env: Record<string, string>) {
  await using conductor = await startConductor({ agents: AGENTS, modelUrl: model.url, env });
  const { client } = conductor;
  const through: number[] = [];
  const tail: number[] = [];
  await waitForEnd(client, (await client.submitTask({ spec: spec({ prompt }) })).task!.id); // warm-up
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    const { task } = await client.submitTask({ spec: spec({ prompt }) });
    const ended = await waitForEnd(client, task!.id);
    if (ended.state !== TaskState.SUCCEEDED)
      throw new Error(`bench task failed: ${ended.result?.error}`);
    through.push(performance.now() - t0);
    tail.push(await resultToEnd(client, task!.id));
  }
  const t0 = performance.now();
  const ids = await Promise.all(
    Array.from(
      { length: TASKS },
      async () => (await client.submitTask({ spec: spec({ prompt: "ok" }) })).task!.id,
    ),
  );
  const submitMs = performance.now() - t0;
  const ended = await Promise.all(ids.map((id) => waitForEnd(client, id, 600_000)));
  const totalMs = performance.now() - t0;
  const failed = ended.filter((t) => t.state !== TaskState.SUCCEEDED).length;
  return {
    one: median(through),
    tail: median(tail),
    perSecond: TASKS / (totalMs / 1000),
    submitMs,
    failed,
  };
}

/** Milliseconds from a task's `result` line to its final state, as the Orchestrator stamped them. */
async function resultToEnd(client: Conductor["client"], id: string): Promise<number> {
  let [result, end] = [NaN, NaN];
  for await (const { event } of client.watchTask({ id })) {
    if (event?.kind.case === "output" && event.kind.value.type === "result")
      result = ms(event.time);
    if (event?.kind.case === "stateChange") end = ms(event.time);
  }
  return end - result;
}

/** The sandbox alone: median wall time of one exec of /bin/true on the process runtime. */
async function sandboxExecMs(sandbox: "bubblewrap" | "none"): Promise<number> {
  const dir = mkdtempSync(path.join(tmpdir(), "conductor-bench-sandbox-"));
  const ws = path.join(dir, "ws");
  mkdirSync(ws);
  chownSync(ws, 61000, 61000);
  const backend = createProcessBackend({ stateDir: path.join(dir, "state"), sandbox });
  const h = await backend.create({
    ...{ nodeId: "bench", agentId: "a", image: "", mounts: [{ hostPath: ws }], env: {} },
    ...{ labels: {}, limits: {}, network: "none", user: "61000:61000" },
  });
  await backend.start(h);
  const times: number[] = [];
  for (let i = 0; i < 30; i++) {
    const t0 = performance.now();
    await (
      await backend.exec(h, { argv: ["/bin/true"], cwd: ws, env: {} })
    ).exited;
    times.push(performance.now() - t0);
  }
  await backend.destroy(h);
  rmSync(dir, { recursive: true, force: true });
  return median(times);
}
const execSandboxed = await sandboxExecMs("bubblewrap");
const execPlain = await sandboxExecMs("none");

const withBroker = await measure({});
const withoutBroker = await measure({ CONDUCTOR_AGENT_BROKER_TOOLS: "false" });
const unsandboxed = await measure({ CONDUCTOR_RUNTIME_PROCESS_SANDBOX: "none" });

console.log(`one task, bare CLI:          median ${median(bare).toFixed(0)} ms over ${RUNS} runs`);
for (const [name, m] of [
  ["with the Broker's MCP tools (default)", withBroker],
  ["without them (agent.broker_tools: false)", withoutBroker],
  ["unsandboxed (runtime.process_sandbox: none), with the tools", unsandboxed],
] as const) {
  console.log(`through Conductor, ${name}:`);
  console.log(
    `  one task: median ${m.one.toFixed(0)} ms over ${RUNS} runs (submit → SUCCEEDED seen by WatchTask), ${(m.one - median(bare)).toFixed(0)} ms over the bare CLI: ${(m.one / median(bare)).toFixed(3)}× the bare CLI`,
  );
  console.log(`  its result line → SUCCEEDED recorded: median ${m.tail.toFixed(0)} ms`);
  console.log(
    `  ${TASKS} trivial tasks on ${AGENTS} agents: ${m.perSecond.toFixed(2)} tasks/s (all submitted in ${m.submitMs.toFixed(0)} ms; ${m.failed} failed)`,
  );
}
console.log(
  `the process sandbox (bubblewrap) costs ${(withBroker.one - unsandboxed.one).toFixed(0)} ms per task (${((withBroker.one / unsandboxed.one - 1) * 100).toFixed(1)} %); throughput ${((withBroker.perSecond / unsandboxed.perSecond) * 100).toFixed(0)} % of unsandboxed`,
);
console.log(
  `one exec of /bin/true on the process runtime: ${execSandboxed.toFixed(1)} ms in a bubblewrap sandbox, ${execPlain.toFixed(1)} ms unsandboxed (median of 30)`,
);
