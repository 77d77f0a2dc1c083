/**
 * Cold agent start and warm exec through the docker/podman runtime plugins, against the
 * engines' own CLIs doing the same thing. Prints medians (and p10/p90) of N runs each. Then
 * what watching idle agents costs the engine: its CPU (its own and its reaped children's)
 * while 4 containers run and nothing watches them, while the plugin waits on each and
 * probes the engine every 5 s as the AgentHost does (a ping; its version and info are read
 * again every 5 minutes), the same with a probe that reads them every time, and, for Podman,
 * with the Docker-compatible wait on each (BENCH_IDLE_SECONDS each, default 10).
 *
 *   npx node bench/containers.ts            # N=15, both engines that answer
 *   BENCH_RUNS=30 BENCH_ENGINES=docker npx node bench/containers.ts
 *
 * Needs the engines (deploy/engines/start-engines.sh) and the image
 * (deploy/agent-image/build-offline.sh; CONDUCTOR_TEST_IMAGE names another).
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import Docker from "dockerode";
import { createDockerBackend } from "../plugins/runtime-docker/index.ts";
import { createPodmanBackend } from "../plugins/runtime-podman/index.ts";
import type { RuntimeBackend, SandboxHandle, SandboxSpec } from "../plugins/runtime.ts";
import { cpuMsOf } from "./peers-common.ts";

const RUNS = Number(process.env["BENCH_RUNS"] ?? 15);
const ENGINES = (process.env["BENCH_ENGINES"] ?? "docker,podman").split(",");
const IDLE_SECONDS = Number(process.env["BENCH_IDLE_SECONDS"] ?? 10);
/** Agents watched in the idle figures, and how often the AgentHost probes (host.ts). */
const WATCHED = 4;
const PROBE_EVERY_MS = 5000;
const IMAGE = process.env["CONDUCTOR_TEST_IMAGE"] ?? "conductor-agent:dev";
const LABEL = { "dev.conductor.bench": randomUUID() };
const ULIMITS = { nofile: 1024, nproc: 4096 };
const run = promisify(execFile);

interface Engine {
  name: string;
  socket: string;
  backend: () => RuntimeBackend;
  /** The CLI and the flags that match what the plugin sets up. */
  cli: string;
  /** The engine's processes, whose CPU the idle figures add up (pgrep -f patterns). */
  processes: string[];
  runFlags: string[];
}

const engines: Engine[] = [
  {
    name: "docker",
    socket: "/var/run/docker.sock",
    backend: () => createDockerBackend({}),
    cli: "docker",
    processes: ["^dockerd( |$)", "^containerd( |$)"],
    runFlags: [],
  },
  {
    name: "podman",
    socket: "/run/podman/podman.sock",
    backend: () => createPodmanBackend({ uid: 0 }),
    cli: "podman",
    processes: ["^podman system service"],
    // Podman cannot start a container here without explicit ulimits.
    runFlags: ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"],
  },
];

const spec = (): SandboxSpec => ({
  nodeId: "bench",
  agentId: randomUUID().slice(0, 8),
  image: IMAGE,
  mounts: [],
  env: {},
  labels: LABEL,
  limits: { memoryBytes: 512 * 2 ** 20, cpus: 1, pids: 256, ulimits: ULIMITS },
  network: "none",
  user: "1000:1000",
});

/** "median … (p10, p90, n)" of durations in ms. */
function summary(ms: number[]): string {
  const sorted = [...ms].sort((a, b) => a - b);
  const at = (q: number) =>
    (sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN).toFixed(0);
  return `median ${at(0.5).padStart(4)} ms  (p10 ${at(0.1)}, p90 ${at(0.9)}, n=${ms.length})`;
}

/** Times `n` runs of fn (after one untimed warm-up); fn may return the time of a first part. */
async function measure(
  n: number,
  fn: () => Promise<number | void>,
): Promise<{ all: string; part: string }> {
  await fn();
  const all: number[] = [];
  const part: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const p = await fn();
    all.push(performance.now() - t);
    if (typeof p === "number") part.push(p);
  }
  return { all: summary(all), part: part.length > 0 ? summary(part) : "" };
}

async function execTrue(b: RuntimeBackend, h: SandboxHandle): Promise<void> {
  const x = await b.exec(h, { argv: ["true"], cwd: "/tmp", env: {} });
  const st = await x.exited;
  if (st.code !== 0) throw new Error(`exec true: ${JSON.stringify(st)} ${x.stderrTail()}`);
}

/** The pids of the engine's processes (the first match of each pattern). */
async function enginePids(e: Engine): Promise<number[]> {
  const pids: number[] = [];
  for (const pattern of e.processes) {
    const { stdout } = await run("pgrep", ["-f", pattern]).catch(() => ({ stdout: "" }));
    const pid = Number(stdout.split("\n")[0]);
    if (pid > 0) pids.push(pid);
  }
  return pids;
}

/** The engine's CPU (ms a second, its own and its reaped children's) while `during` runs. */
async function engineCpu(pids: number[], during: (signal: AbortSignal) => Promise<void>) {
  const cpu = () => pids.reduce((sum, pid) => sum + cpuMsOf(pid, true), 0);
  const stop = AbortSignal.timeout(IDLE_SECONDS * 1000);
  const c0 = cpu();
  const t0 = performance.now();
  await during(stop);
  return (((cpu() - c0) / (performance.now() - t0)) * 1000).toFixed(0).padStart(4);
}

/** Until `signal`: waits on each container (`wait`), and calls `probe` every PROBE_EVERY_MS. */
async function watchIdle(
  handles: SandboxHandle[],
  signal: AbortSignal,
  wait: (h: SandboxHandle, signal: AbortSignal) => Promise<unknown>,
  probe?: () => Promise<unknown>,
): Promise<void> {
  const waits = handles.map((h) => wait(h, signal).catch(() => undefined));
  while (!signal.aborted) {
    await probe?.();
    await sleep(PROBE_EVERY_MS, undefined, { signal }).catch(() => undefined);
  }
  await Promise.all(waits);
}

/** The same exec through dockerode directly, without the plugin's process-tree wrapper. */
async function bareExec(docker: Docker, id: string): Promise<void> {
  const ex = await docker
    .getContainer(id)
    .exec({ Cmd: ["true"], AttachStdout: true, AttachStderr: true });
  const stream = await ex.start({ hijack: true, stdin: false });
  stream.resume();
  await new Promise((resolve) => stream.once("end", resolve));
}

for (const e of engines.filter((x) => ENGINES.includes(x.name))) {
  const b = e.backend();
  const fp = await b.fingerprint();
  if (!fp.healthy) {
    console.log(`${e.name}: skipped (${fp.detail})`);
    continue;
  }
  console.log(`\n${e.name} ${fp.detail}, image ${IMAGE}`);
  try {
    const line = (what: string, figures: string) => console.log(`  ${what}`.padEnd(58) + figures);
    const cold = await measure(RUNS, async () => {
      const t = performance.now();
      const h = await b.create(spec());
      await b.start(h);
      await execTrue(b, h);
      const ready = performance.now() - t;
      await b.destroy(h);
      return ready;
    });
    line("cold, plugin: create+start until exec true succeeds", cold.part);
    line("cold, plugin: the same + destroy", cold.all);
    const raw = await measure(RUNS, async () => {
      await run(e.cli, ["run", "--rm", ...e.runFlags, IMAGE, "true"]);
    });
    line(`cold, ${e.cli} run --rm <image> true`, raw.all);
    const rawNone = await measure(RUNS, async () => {
      await run(e.cli, ["run", "--rm", "--network", "none", ...e.runFlags, IMAGE, "true"]);
    });
    line(`cold, ${e.cli} run --rm --network none <image> true`, rawNone.all);

    const h = await b.create(spec());
    await b.start(h);
    const docker = new Docker({ socketPath: e.socket });
    line("warm exec, plugin (exec true)", (await measure(RUNS, () => execTrue(b, h))).all);
    line(
      "warm exec, dockerode without the wrapper",
      (await measure(RUNS, () => bareExec(docker, h.id))).all,
    );
    const cliExec = await measure(RUNS, async () => {
      await run(e.cli, ["exec", h.id, "true"]);
    });
    line(`warm exec, ${e.cli} exec <ctr> true`, cliExec.all);

    const pids = await enginePids(e);
    if (pids.length === 0) {
      console.log(`  (idle figures skipped: no process matches ${e.processes.join(", ")})`);
      continue;
    }
    const idle: SandboxHandle[] = [];
    for (let i = 0; i < WATCHED; i++) {
      idle.push(await b.create(spec()));
      await b.start(idle.at(-1)!);
    }
    const perSecond = `ms of engine CPU a second (${IDLE_SECONDS} s)`;
    line(
      `${WATCHED} idle agents, nothing watching them`,
      `${await engineCpu(pids, (s) => sleep(IDLE_SECONDS * 1000, undefined, { signal: s }).catch(() => undefined))} ${perSecond}`,
    );
    line(
      `${WATCHED} idle agents, plugin: waitForExit each, ping/5 s`,
      `${await engineCpu(pids, (s) =>
        watchIdle(
          idle,
          s,
          (h, signal) => b.waitForExit(h, signal),
          () => b.fingerprint(),
        ),
      )} ${perSecond}`,
    );
    line(
      `${WATCHED} idle agents, the same, probe reads version+info`,
      `${await engineCpu(pids, (s) =>
        watchIdle(
          idle,
          s,
          (h, signal) => b.waitForExit(h, signal),
          () => Promise.all([docker.version(), docker.info()]),
        ),
      )} ${perSecond}`,
    );
    if (e.name === "podman") {
      line(
        `${WATCHED} idle agents, Docker-compatible wait on each`,
        `${await engineCpu(pids, (s) =>
          watchIdle(idle, s, (h, abortSignal) => docker.getContainer(h.id).wait({ abortSignal })),
        )} ${perSecond}`,
      );
    }
  } finally {
    for (const h of await b.list(LABEL)) await b.destroy(h);
    await b.close();
  }
}
