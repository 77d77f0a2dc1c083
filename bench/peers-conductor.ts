// Conductor's side of bench/peers.ts: an Orchestrator and an AgentHost, each its own process
// (`conductor orchestrator`, `conductor agent-host`) on temp folders, agents running the
// instant fake CLI with broker tools off, and the clients that load them.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { timeOrderedId } from "../services/shared/ids.ts";
import { OrchestratorService } from "../gen/conductor/v1/orchestrator_pb.js";
import { StateChangeSchema, TaskState } from "../gen/conductor/v1/task_pb.js";
import { TaskStore } from "../services/orchestrator/store.ts";
import { AsyncQueue } from "../services/shared/async-queue.ts";
import { unixTransport } from "../services/shared/transport.ts";
import { BIN, eventually, spec, startService, type ServiceProcess } from "../test/harness.ts";
import { batchRate, callers, cleanUpIfStopped } from "./peers-common.ts";

type Orchestrator = Client<typeof OrchestratorService>;

/** A Conductor started for the bench; dispose stops its processes and removes its folders. */
export interface BenchConductor extends AsyncDisposable {
  client: Orchestrator;
  orchestrator: ServiceProcess;
  /** Starts the AgentHost: queued tasks start running. Resolves once its agents are up. */
  startAgents(): Promise<void>;
}

const TASK = spec({ prompt: "ok" });

/**
 * Starts an Orchestrator (and no AgentHost, so submitted tasks stay QUEUED until
 * startAgents()) on a fresh temp folder, after `fill` had the data folder to itself.
 */
export async function startBenchConductor(o: {
  fakeCli: string;
  agents: number;
  fill?: (dataDir: string) => void;
}): Promise<BenchConductor> {
  const dir = mkdtempSync(path.join(tmpdir(), "peers-conductor-"));
  const dataDir = path.join(dir, "data");
  const where = ["--socket-dir", path.join(dir, "run"), "--data-dir", dataDir];
  const env = {
    CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
    CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1",
    CONDUCTOR_OBSERVABILITY_AGENT_HOST_METRICS_PORT: "-1",
    CONDUCTOR_OBSERVABILITY_BROKER_METRICS_PORT: "-1",
    CONDUCTOR_AGENT_CLAUDE_PATH: o.fakeCli,
    CONDUCTOR_AGENT_BROKER_TOOLS: "false",
    // BENCH_NODE_OPTIONS="--cpu-prof --cpu-prof-dir=DIR" profiles the services.
    ...(process.env["BENCH_NODE_OPTIONS"]
      ? { NODE_OPTIONS: process.env["BENCH_NODE_OPTIONS"] }
      : {}),
  };
  const processes: ServiceProcess[] = [];
  // Every service as it is spawned, not once ready: a bench stopped while one starts ends it too.
  const spawned: ChildProcess[] = [];
  const spawnTracked = ((...a: unknown[]) => {
    const child = (spawn as (...x: unknown[]) => ChildProcess)(...a);
    spawned.push(child);
    return child;
  }) as typeof spawn;
  const start = (command: string, args: string[]) =>
    startService(command, args, env, BIN, spawnTracked);
  const forget = cleanUpIfStopped(() => {
    for (const p of spawned) p.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  const close = async () => {
    for (const p of processes.reverse()) await p.stop();
    rmSync(dir, { recursive: true, force: true });
    forget();
  };
  try {
    o.fill?.(dataDir);
    processes.push(await start("orchestrator", where));
  } catch (e) {
    await close();
    throw e;
  }
  const client = createClient(
    OrchestratorService,
    unixTransport(path.join(dir, "run", "orchestrator.sock")),
  );
  return {
    client,
    orchestrator: processes[0]!,
    async startAgents() {
      const args = [...where, "--runtime", "process", "--agents", String(o.agents)];
      processes.push(await start("agent-host", args));
      await eventually(async () => {
        const s = await client.getStats({});
        return s.agentsIdle + s.agentsBusy >= o.agents ? true : undefined;
      }, `${o.agents} agents up`);
    },
    [Symbol.asyncDispose]: close,
  };
}

/** Submits one task (durable once answered) and returns its id. */
export async function submit(client: Orchestrator): Promise<string> {
  return (await client.submitTask({ spec: TASK }, { timeoutMs: 120_000 })).task!.id;
}

/** Submits acknowledged per second: `n` submits from `c` concurrent callers. */
export async function submits(client: Orchestrator, n: number, c: number): Promise<number> {
  const t0 = performance.now();
  await callers(n, c, async () => void (await submit(client)));
  return n / ((performance.now() - t0) / 1000);
}

/**
 * Submits acknowledged per second over one SubmitTasks stream: `n` submits from `c` concurrent
 * callers, each waiting for its own answer (the n-th answer is the n-th request's), as callers
 * of one BullMQ Queue share its Redis connection.
 */
export async function streamSubmits(client: Orchestrator, n: number, c: number): Promise<number> {
  const requests = new AsyncQueue<{ spec: typeof TASK }>();
  const waiting: ((id: string) => void)[] = [];
  const answers = (async () => {
    for await (const res of client.submitTasks(requests, { timeoutMs: 120_000 })) {
      for (const a of res.answers) {
        if (!a.taskId) throw new Error(`submit refused: ${a.error?.message}`);
        waiting.shift()!(a.taskId);
      }
    }
  })();
  const t0 = performance.now();
  await callers(n, c, () => {
    const answered = new Promise<string>((resolve) => waiting.push(resolve));
    requests.push({ spec: TASK });
    return answered.then(() => undefined);
  });
  const rate = n / ((performance.now() - t0) / 1000);
  requests.end();
  await answers;
  return rate;
}

/**
 * Tasks acknowledged per second when submitted `batch` at a time: each a SubmitTaskGroup of
 * `batch` members (stored in one transaction), from `c` concurrent callers; `n` tasks in all.
 */
export async function groupSubmits(
  client: Orchestrator,
  n: number,
  batch: number,
  c: number,
): Promise<number> {
  const members = Array.from({ length: batch }, (_, i) => ({ name: `m${i}`, spec: TASK }));
  return await batchRate(n, batch, c, () =>
    client.submitTaskGroup({ spec: { name: "batch", members } }, { timeoutMs: 120_000 }),
  );
}

/** When (performance.now()) the task ended, followed through WatchTask; throws unless it SUCCEEDED. */
export async function ended(
  client: Orchestrator,
  id: string,
  signal: AbortSignal,
): Promise<number> {
  let last: TaskState | undefined;
  for await (const { event } of client.watchTask({ id }, { signal })) {
    if (event?.kind.case === "stateChange") last = event.kind.value.state;
  }
  if (last !== TaskState.SUCCEEDED) {
    const { task } = await client.getTask({ id });
    throw new Error(`task ${id} ended ${TaskState[last ?? 0]}: ${task?.result?.error ?? ""}`);
  }
  return performance.now();
}

/** Tasks completed per second, end to end: `n` submits from `c` callers, each followed to its end. */
export async function completions(
  client: Orchestrator,
  o: { n: number; callers: number; timeoutMs: number },
): Promise<number> {
  const signal = AbortSignal.timeout(o.timeoutMs);
  const ends: Promise<number>[] = [];
  const t0 = performance.now();
  await callers(
    o.n,
    o.callers,
    async () => void ends.push(ended(client, await submit(client), signal)),
  );
  const last = Math.max(...(await Promise.all(ends)));
  return o.n / ((last - t0) / 1000);
}

/** Milliseconds from calling SubmitTask to its RUNNING event arriving, one task at a time. */
export async function startLatencies(
  client: Orchestrator,
  samples: number,
): Promise<{ scheduled: number[]; running: number[] }> {
  const out = { scheduled: [] as number[], running: [] as number[] };
  for (let i = 0; i < samples; i++) {
    const signal = AbortSignal.timeout(60_000);
    const t0 = performance.now();
    const id = await submit(client);
    let [scheduled, running] = [NaN, NaN];
    for await (const { event } of client.watchTask({ id }, { signal })) {
      if (event?.kind.case !== "stateChange") continue;
      const now = performance.now() - t0;
      if (event.kind.value.state === TaskState.SCHEDULED) scheduled = now;
      if (event.kind.value.state === TaskState.RUNNING) running = now;
    }
    if (Number.isNaN(running)) throw new Error(`task ${id} ended without running`);
    out.scheduled.push(scheduled);
    out.running.push(running);
  }
  return out;
}

/**
 * Queues `n` tasks straight into a (stopped) Orchestrator's store, as SubmitTask stores
 * them (the row and its QUEUED event), 5,000 to a transaction; returns their ids, oldest first.
 */
export function fillStore(dataDir: string, n: number): string[] {
  const store = new TaskStore(dataDir);
  const ids: string[] = [];
  try {
    const queued = {
      case: "stateChange" as const,
      value: create(StateChangeSchema, { state: TaskState.QUEUED, reason: "submitted" }),
    };
    for (let done = 0; done < n;) {
      const batch = Math.min(5_000, n - done);
      const now = Date.now();
      store.tx(() => {
        for (let i = 0; i < batch; i++) {
          const id = timeOrderedId(); // as the Orchestrator makes them
          store.insert(id, TASK, 1, now);
          store.appendEvent(id, queued, now);
          ids.push(id);
        }
      });
      done += batch;
    }
  } finally {
    store.close();
  }
  return ids;
}

/** Queues `n` tasks through SubmitTask from `c` callers; their ids in the order acknowledged. */
export async function fillBySubmit(
  client: Orchestrator,
  n: number,
  c: number,
  onProgress: (done: number) => void,
): Promise<string[]> {
  const ids: string[] = [];
  await callers(n, c, async () => {
    ids.push(await submit(client));
    if (ids.length % 5_000 === 0) onProgress(ids.length);
  });
  return ids;
}

/** Milliseconds of each of `k` calls of fn, one after another. */
export async function latency(k: number, fn: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < k; i++) {
    const t0 = performance.now();
    await fn();
    out.push(performance.now() - t0);
  }
  return out;
}

/** Resident memory of a process, in MiB (VmRSS of /proc/PID/status). */
export function rssMiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) / 1024;
}
