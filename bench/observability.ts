// Prints what tracing and metrics cost: task throughput, the service process's CPU per task,
// and unary RPC latency, for `conductor up` with observability off (no /metrics, no tracing)
// and on (/metrics scraped every second, every span exported over OTLP to a local sink).
// Run: npm run bench:observability [-- --tasks 100 --agents 4 --calls 2000 --rounds 3]
import { readFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { parseArgs } from "node:util";
import { TaskState } from "../gen/conductor/v1/task_pb.js";
import { startFakeModel } from "../test/fake-model/server.ts";
import { spec, startConductor, waitForEnd } from "../test/harness.ts";

const { values } = parseArgs({
  options: {
    tasks: { type: "string", default: "100" },
    agents: { type: "string", default: "4" },
    calls: { type: "string", default: "2000" },
    rounds: { type: "string", default: "3" },
  },
});
const TASKS = Number(values.tasks);
const AGENTS = Number(values.agents);
const CALLS = Number(values.calls);
const ROUNDS = Number(values.rounds);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.99)]!;

/** CPU time (user + system, ms) a process has used; its children not included. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // clock ticks at 100 Hz
}

/** A sink for OTLP exports: answers 200 and counts what it got. */
async function otlpSink() {
  let bytes = 0;
  const server = http.createServer((req, res) => {
    req.on("data", (c: Buffer) => (bytes += c.length));
    req.on("end", () => res.writeHead(200).end());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    bytes: () => bytes,
    [Symbol.asyncDispose]: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

await using model = await startFakeModel();
await using sink = await otlpSink();

async function measure(observed: boolean) {
  const env: Record<string, string> = observed
    ? { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_BSP_SCHEDULE_DELAY: "1000" }
    : { CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1" };
  await using conductor = await startConductor({ agents: AGENTS, modelUrl: model.url, env });
  const { client } = conductor;
  const proc = conductor.processes[0]!;
  const metricsUrl = proc.ready["metrics"] as string | null;
  let scrapes = 0;
  const scraper = metricsUrl
    ? setInterval(() => {
        fetch(metricsUrl)
          .then((r) => r.text())
          .then(() => scrapes++)
          .catch(() => undefined); // a missed scrape is not counted
      }, 1000)
    : undefined;
  try {
    await waitForEnd(client, (await client.submitTask({ spec: spec({ prompt: "ok" }) })).task!.id);

    const latencies: number[] = [];
    const { task } = await client.submitTask({ spec: spec({ prompt: "ok" }) });
    await waitForEnd(client, task!.id);
    for (let i = 0; i < CALLS; i++) {
      const t0 = performance.now();
      await client.getTask({ id: task!.id });
      latencies.push(performance.now() - t0);
    }

    const cpu0 = cpuMs(proc.proc.pid!);
    const t0 = performance.now();
    const ids = await Promise.all(
      Array.from(
        { length: TASKS },
        async () => (await client.submitTask({ spec: spec({ prompt: "ok" }) })).task!.id,
      ),
    );
    const ended = await Promise.all(ids.map((id) => waitForEnd(client, id, 600_000)));
    const seconds = (performance.now() - t0) / 1000;
    const cpu = cpuMs(proc.proc.pid!) - cpu0;
    const failed = ended.filter((t) => t.state !== TaskState.SUCCEEDED).length;
    return {
      tasksPerSecond: TASKS / seconds,
      cpuMsPerTask: cpu / TASKS,
      rpcMedianMs: median(latencies),
      rpcP99Ms: p99(latencies),
      failed,
      scrapes,
    };
  } finally {
    clearInterval(scraper);
  }
}

// Alternate the two, so that drift (a warming machine, a growing page cache) hits both alike.
const offRuns = [];
const onRuns = [];
for (let i = 0; i < ROUNDS; i++) {
  offRuns.push(await measure(false));
  onRuns.push(await measure(true));
}
const best = (rs: Awaited<ReturnType<typeof measure>>[]) => ({
  tasksPerSecond: median(rs.map((r) => r.tasksPerSecond)),
  cpuMsPerTask: median(rs.map((r) => r.cpuMsPerTask)),
  rpcMedianMs: median(rs.map((r) => r.rpcMedianMs)),
  rpcP99Ms: median(rs.map((r) => r.rpcP99Ms)),
  failed: rs.reduce((n, r) => n + r.failed, 0),
  scrapes: rs.reduce((n, r) => n + r.scrapes, 0),
});
const off = best(offRuns);
const on = best(onRuns);
const row = (name: string, r: typeof off) =>
  `${name.padEnd(34)} ${r.tasksPerSecond.toFixed(2).padStart(7)} tasks/s  ${r.cpuMsPerTask
    .toFixed(2)
    .padStart(
      7,
    )} CPU-ms/task  GetTask median ${r.rpcMedianMs.toFixed(3)} ms, p99 ${r.rpcP99Ms.toFixed(3)} ms  (${r.failed} failed)`;
console.log(
  `${TASKS} trivial tasks on ${AGENTS} agents, ${CALLS} sequential GetTask calls; medians of ${ROUNDS} alternating rounds:`,
);
console.log(row("observability off", off));
console.log(row("tracing (OTLP) + metrics (1 s scrape)", on));
console.log(
  `cost: ${(((off.tasksPerSecond - on.tasksPerSecond) / off.tasksPerSecond) * 100).toFixed(1)}% throughput, ` +
    `${(on.cpuMsPerTask - off.cpuMsPerTask).toFixed(2)} CPU-ms per task in the service process, ` +
    `${((on.rpcMedianMs - off.rpcMedianMs) * 1000).toFixed(0)} µs per unary call (median); ` +
    `${on.scrapes} scrapes, ${(sink.bytes() / 1024).toFixed(0)} KiB of spans exported`,
);
