// Conductor against its peer, side by side in one run, median of --runs: durable submits (and
// the CPU each costs the callers' process and the server's), completions end to end with an instant fake CLI, submit → running latency, each against
// BullMQ on a redis-server started here (AOF, fsync always, Unix socket); and Conductor at
// --queued tasks against itself at --small (submits, drain, GetStats, ListTasks, RSS).
//   npm run bench:peers [-- --tasks 2000 --callers 32 --agents 16 --runs 3 --queued 100000]
//   quick: npm run bench:peers -- --queued 20000 --runs 1
//   --warmup N: untimed submits before each timed submit run, both sides (default 2000)
//   parts: --only peers (against BullMQ), --only submits (its first rows), --only queued
import { rmSync } from "node:fs";
import { availableParallelism, loadavg } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { TaskState } from "../gen/conductor/v1/task_pb.js";
import {
  bullAdds,
  bullBulkAdds,
  bullCompletions,
  bullStartLatencies,
  checkRedisInstalled,
  startRedis,
  type Redis,
} from "./peers-bullmq.ts";
import { cleanUpIfStopped, median, pct, progress, withCpu, writeFakeCli } from "./peers-common.ts";
import {
  completions,
  ended,
  fillBySubmit,
  fillStore,
  groupSubmits,
  latency,
  rssMiB,
  startBenchConductor,
  startLatencies,
  streamSubmits,
  submits,
} from "./peers-conductor.ts";
import { flatRow, latencyRow, printTable, ratioRow, type Row } from "./peers-table.ts";

const { values } = (() => {
  try {
    return parseArgs({
      options: {
        tasks: { type: "string", default: "2000" },
        callers: { type: "string", default: "32" },
        agents: { type: "string", default: "16" },
        runs: { type: "string", default: "3" },
        samples: { type: "string", default: "200" },
        queued: { type: "string", default: "100000" },
        small: { type: "string", default: "1000" },
        slice: { type: "string", default: "300" },
        probe: { type: "string", default: "200" },
        fill: { type: "string", default: "store" },
        only: { type: "string", default: "" },
        warmup: { type: "string", default: "2000" },
      },
    });
  } catch (e) {
    // An unknown flag, or one without its value: a usage error, not a stack.
    process.stderr.write(`bench:peers: ${(e as Error).message}\n`);
    return process.exit(2);
  }
})();
/** A positive integer flag, at most `max`; anything else is a usage error. */
function count(name: keyof typeof values, max: number): number {
  const n = Number(values[name]);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    process.stderr.write(`bench:peers: --${name} must be a whole number from 1 to ${max}\n`);
    process.exit(2);
  }
  return n;
}
const TASKS = count("tasks", 100_000);
const CALLERS = count("callers", 1_000);
const AGENTS = count("agents", 256);
const RUNS = count("runs", 20);
const SAMPLES = count("samples", 10_000);
const QUEUED = count("queued", 1_000_000);
const SMALL = count("small", QUEUED);
const PROBE = count("probe", 10_000);
/**
 * Submits made, and not timed, before each timed submit run, on both sides alike: each is
 * measured warm, as a service that has been running is. V8 optimises a function only after
 * many calls: on 2 cores, after 50 untimed submits Conductor's stream took 4,200–5,300/s
 * (server CPU 215 µs a submit), after 2,000 5,200–7,300/s (115–165 µs); BullMQ's client is
 * JavaScript too, and its figure moved from 9,000–15,000/s to 9,000–16,500/s.
 */
const WARMUP = count("warmup", 100_000);
const FILL = values.fill;
if (FILL !== "store" && FILL !== "submit") {
  process.stderr.write("bench:peers: --fill is store (straight into the store) or submit\n");
  process.exit(2);
}
const ONLY = values.only;
if (ONLY !== "" && ONLY !== "peers" && ONLY !== "submits" && ONLY !== "queued") {
  process.stderr.write(
    "bench:peers: --only is peers (against BullMQ), submits (only their submit rows) or queued (100,000 queued)\n",
  );
  process.exit(2);
}
/** Completions not counted at the start of a drain (the AgentHost and its agents starting). */
const WARM = Math.min(50, Math.floor(SMALL / 4));
const SLICE = Math.min(count("slice", 100_000), Math.floor((SMALL - WARM) / RUNS));
/** The longest any one phase may take. */
const PHASE_MS = 15 * 60_000;
/** Tasks per batch submit (a task group's members; BullMQ's addBulk), from a few callers. */
const BATCH = 100;
const BATCH_CALLERS = 4;
/** Calls of each query kind per run (the median is taken: a few calls are at the mercy of noise). */
const QUERIES = 200;

if (ONLY !== "queued") {
  try {
    checkRedisInstalled();
  } catch (e) {
    process.stderr.write(`bench:peers: ${(e as Error).message}\n`);
    process.exit(1);
  }
}
const fakeCli = writeFakeCli();
cleanUpIfStopped(() => rmSync(path.dirname(fakeCli), { recursive: true, force: true }));
const rows: Row[] = [];
try {
  if (ONLY !== "queued") {
    await using redis = await startRedis();
    rows.push(...(await peerRows(redis)));
  }
  if (ONLY === "" || ONLY === "queued") rows.push(...(await queuedRows()));
} finally {
  rmSync(path.dirname(fakeCli), { recursive: true, force: true });
}
printTable(
  [
    `bench:peers — ${availableParallelism()} CPUs, load ${loadavg()
      .map((l) => l.toFixed(1))
      .join(
        " ",
      )}; median of ${RUNS}; ${TASKS} tasks, ${CALLERS} callers, ${AGENTS} agents; fill: ${FILL}`,
    "peer: BullMQ on redis-server (AOF, appendfsync always, Unix socket) for the first rows; Conductor itself at fewer queued for the last",
  ],
  rows,
);

/** Figures 1–3: Conductor against BullMQ, run by run. */
async function peerRows(redis: Redis): Promise<Row[]> {
  const rows: Row[] = [];
  // 1. Durable submits acknowledged: a fresh Conductor (no agents) and a fresh queue per run.
  // Conductor's callers share one SubmitTasks stream (as BullMQ's share one Redis connection),
  // and, for comparison, make one SubmitTask call each.
  const sub = { c: [] as number[], unary: [] as number[], b: [] as number[] };
  // Where a submit's CPU goes: the callers' client (this process) and the server's.
  const cpu = { cClient: [] as number[], cServer: [] as number[] };
  const bcpu = { bClient: [] as number[], bServer: [] as number[] };
  for (let r = 0; r < RUNS; r++) {
    progress(`run ${r + 1}/${RUNS}: ${TASKS} submits from ${CALLERS} callers`);
    {
      await using c = await startBenchConductor({ fakeCli, agents: AGENTS });
      await streamSubmits(c.client, WARMUP, CALLERS);
      const m = await withCpu(TASKS, c.orchestrator.proc.pid!, () =>
        streamSubmits(c.client, TASKS, CALLERS),
      );
      sub.c.push(m.rate);
      cpu.cClient.push(m.clientUs);
      cpu.cServer.push(m.serverUs);
      await submits(c.client, WARMUP, CALLERS);
      sub.unary.push(await submits(c.client, TASKS, CALLERS));
    }
    await bullAdds(redis, WARMUP, CALLERS);
    const m = await withCpu(TASKS, redis.pid, () => bullAdds(redis, TASKS, CALLERS));
    sub.b.push(m.rate);
    bcpu.bClient.push(m.clientUs);
    bcpu.bServer.push(m.serverUs);
  }
  rows.push(ratioRow("durable submits acknowledged /s (SubmitTasks)", sub.c, sub.b, "≥ 1.5×", 1.5));
  rows.push(
    ratioRow(
      "  CPU a submit, callers' client, µs (lower is better)",
      cpu.cClient,
      bcpu.bClient,
      "",
      0,
    ),
    ratioRow(
      "  CPU a submit, server (Orchestrator; redis-server), µs",
      cpu.cServer,
      bcpu.bServer,
      "",
      0,
    ),
    ratioRow("durable submits /s, a SubmitTask call each", sub.unary, sub.b, "", 0),
  );
  // 1b. The same, 100 at a time: a task group of 100 members against BullMQ's addBulk of 100.
  const bulk = { c: [] as number[], b: [] as number[] };
  for (let r = 0; r < RUNS; r++) {
    progress(
      `run ${r + 1}/${RUNS}: ${TASKS} submits, ${BATCH} at a time, from ${BATCH_CALLERS} callers`,
    );
    {
      await using c = await startBenchConductor({ fakeCli, agents: AGENTS });
      await groupSubmits(c.client, Math.max(BATCH, WARMUP), BATCH, BATCH_CALLERS);
      bulk.c.push(await groupSubmits(c.client, TASKS, BATCH, BATCH_CALLERS));
    }
    await bullBulkAdds(redis, Math.max(BATCH, WARMUP), BATCH, BATCH_CALLERS);
    bulk.b.push(await bullBulkAdds(redis, TASKS, BATCH, BATCH_CALLERS));
  }
  rows.push(
    ratioRow(
      `durable submits /s, ${BATCH} at a time (a group; BullMQ addBulk)`,
      bulk.c,
      bulk.b,
      "",
      0,
    ),
  );

  if (ONLY === "submits") return rows;

  // 2. and 3. One Conductor with its agents; BullMQ with a worker of as many.
  const done = { c: [] as number[], noop: [] as number[], spawn: [] as number[] };
  const lat = {
    c50: [] as number[],
    c99: [] as number[],
    s50: [] as number[],
    s99: [] as number[],
    b50: [] as number[],
    b99: [] as number[],
  };
  {
    await using c = await startBenchConductor({ fakeCli, agents: AGENTS });
    progress(`starting ${AGENTS} agents`);
    await c.startAgents();
    await completions(c.client, { n: 50, callers: CALLERS, timeoutMs: PHASE_MS }); // warm-up
    for (let r = 0; r < RUNS; r++) {
      progress(`run ${r + 1}/${RUNS}: ${TASKS} tasks end to end on ${AGENTS} agents`);
      done.c.push(await completions(c.client, { n: TASKS, callers: CALLERS, timeoutMs: PHASE_MS }));
      const bull = { n: TASKS, callers: CALLERS, concurrency: AGENTS, timeoutMs: PHASE_MS };
      done.noop.push(await bullCompletions(redis, bull));
      done.spawn.push(await bullCompletions(redis, { ...bull, fakeCli }));
      progress(`run ${r + 1}/${RUNS}: ${SAMPLES} submits → running, one at a time`);
      const cl = await startLatencies(c.client, SAMPLES);
      const bl = await bullStartLatencies(redis, SAMPLES);
      lat.c50.push(pct(cl.running, 50));
      lat.c99.push(pct(cl.running, 99));
      lat.s50.push(pct(cl.scheduled, 50));
      lat.s99.push(pct(cl.scheduled, 99));
      lat.b50.push(pct(bl, 50));
      lat.b99.push(pct(bl, 99));
    }
  }
  rows.push(
    ratioRow(
      "tasks completed end to end /s, vs BullMQ spawning the fake CLI",
      done.c,
      done.spawn,
      "≥ 1.5×",
      1.5,
    ),
    ratioRow("tasks completed end to end /s, vs BullMQ no-op jobs", done.c, done.noop, "", 0),
    latencyRow("submit → running p50, ms", lat.c50, lat.b50, Infinity),
    latencyRow("submit → running p99, ms", lat.c99, lat.b99, 5),
    // Where that time goes: on an agent (stored, sent to its host) before its process starts.
    latencyRow("submit → scheduled p50, ms", lat.s50, lat.b50, Infinity),
    latencyRow("submit → scheduled p99, ms", lat.s99, lat.b99, Infinity),
  );

  return rows;
}

/** Figure 4: Conductor at QUEUED queued tasks against itself at SMALL. */
async function queuedRows(): Promise<Row[]> {
  const small = await atQueued(SMALL);
  const big = await atQueued(QUEUED);
  const at = `at ${QUEUED.toLocaleString("en")} vs ${SMALL.toLocaleString("en")} queued`;
  return [
    flatRow(`submits /s ${at}`, big.submits, small.submits, "rate"),
    flatRow(`drain (completions /s) ${at}`, big.drain, small.drain, "rate"),
    flatRow(`GetStats, ms ${at}`, big.stats, small.stats, "time"),
    flatRow(`ListTasks(QUEUED) first page, ms ${at}`, big.list, small.list, "time"),
    {
      figure: `Orchestrator RSS, MiB, settled, at ${QUEUED.toLocaleString("en")} (peer: at ${SMALL.toLocaleString("en")}) queued`,
      conductor: big.rss.settled,
      peer: small.rss.settled,
      ratio: big.rss.settled / small.rss.settled,
      target: "≤ 200 MiB",
      pass: big.rss.settled <= 200,
    },
    {
      figure: `Orchestrator RSS, MiB, right after the queries and submits, same`,
      conductor: big.rss.loaded,
      peer: small.rss.loaded,
      ratio: big.rss.loaded / small.rss.loaded,
      target: "",
      pass: undefined,
    },
  ];
}

/** Conductor's figures with `n` tasks queued: submit rate, query latencies, RSS, drain rate. */
async function atQueued(n: number) {
  progress(`${n.toLocaleString("en")} queued: filling (${FILL})`);
  const filling = performance.now();
  let ids: string[] = [];
  const fill =
    FILL === "store" ? (dataDir: string) => void (ids = fillStore(dataDir, n)) : undefined;
  await using c = await startBenchConductor({ fakeCli, agents: AGENTS, ...(fill ? { fill } : {}) });
  if (FILL === "submit")
    ids = await fillBySubmit(c.client, n, 64, (k) =>
      progress(`  ${k.toLocaleString("en")} submitted`),
    );
  // Warm-up (the Orchestrator's first calls of each kind compile and load its store).
  await c.client.getStats({});
  await c.client.listTasks({ states: [TaskState.QUEUED] });
  await submits(c.client, 20, CALLERS);
  progress(`  filled and warmed up in ${((performance.now() - filling) / 1000).toFixed(0)} s`);
  const stats: number[] = [];
  const list: number[] = [];
  const rates: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    progress(
      `${n.toLocaleString("en")} queued, run ${r + 1}/${RUNS}: GetStats, ListTasks, ${PROBE} submits`,
    );
    stats.push(median(await latency(QUERIES, () => c.client.getStats({}))));
    list.push(
      median(await latency(QUERIES, () => c.client.listTasks({ states: [TaskState.QUEUED] }))),
    );
    rates.push(await submits(c.client, PROBE, CALLERS));
  }
  // Right after that load (the heap as garbage left it), and once idle: what it holds.
  const rss = { loaded: rssMiB(c.orchestrator.proc.pid!), settled: 0 };
  rss.settled = await settledRss(c.orchestrator.proc.pid!);
  // The oldest tasks run first (FIFO at one priority): follow the first WARM + RUNS × SLICE.
  progress(
    `${n.toLocaleString("en")} queued: draining ${RUNS} × ${SLICE} tasks on ${AGENTS} agents`,
  );
  const signal = AbortSignal.timeout(PHASE_MS);
  const ends = ids.slice(0, WARM + RUNS * SLICE).map((id) => ended(c.client, id, signal));
  await c.startAgents();
  const times = (await Promise.all(ends)).sort((a, b) => a - b);
  const drains = Array.from({ length: RUNS }, (_, r) => {
    const from = times[WARM + r * SLICE - 1]!;
    const to = times[WARM + (r + 1) * SLICE - 1]!;
    return SLICE / ((to - from) / 1000);
  });
  return { stats, list, submits: rates, drain: drains, rss };
}

/**
 * The process's RSS once it stops falling while idle (V8 gives back what garbage collection
 * frees when allocation stops): sampled every 500 ms until three samples in a row are no lower
 * than the lowest yet, or 20 s pass.
 */
async function settledRss(pid: number): Promise<number> {
  let lowest = rssMiB(pid);
  let still = 0;
  for (let i = 0; i < 40 && still < 3; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const now = rssMiB(pid);
    still = now < lowest ? 0 : still + 1;
    lowest = Math.min(lowest, now);
  }
  return lowest;
}
