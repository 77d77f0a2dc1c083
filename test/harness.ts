import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { OrchestratorService } from "../gen/conductor/v1/orchestrator_pb.js";
import {
  TaskSpecSchema,
  TaskState,
  type Task,
  type TaskSpec,
} from "../gen/conductor/v1/task_pb.js";
import { SERVICE_NODE_FLAGS } from "../services/cli/service-heap.ts";
import { unixTransport } from "../services/shared/transport.ts";

/** The project's root folder. */
export const ROOT = path.resolve(import.meta.dirname, "..");
/** The `conductor` command of this checkout. */
export const BIN = path.join(ROOT, "bin", "conductor.js");
/** Debian's Python, whose python3-grpcio is the client (another python3 on PATH may lack it). */
export const PYTHON = "/usr/bin/python3";
/** One gRPC call (unary, streams, or a bidi list) from Python's grpcio: test/clients/raw_call.py. */
export const RAW_CALL = path.join(ROOT, "test", "clients", "raw_call.py");

/** A prompt the fake model follows step by step (see test/fake-model). */
export function scripted(steps: unknown[], words = "Do the scripted work."): string {
  return `${words}\n<fake-script>${JSON.stringify(steps)}</fake-script>`;
}

/** A TaskSpec with defaults for tests. */
export function spec(fields: MessageInitShape<typeof TaskSpecSchema>): TaskSpec {
  return create(TaskSpecSchema, fields);
}

/** One `conductor` service process started by a test. */
export interface ServiceProcess {
  proc: ChildProcess;
  stderr: () => string;
  /** The JSON ready line it printed (socket, metrics URL, …). */
  ready: Record<string, unknown>;
  /** SIGTERM and wait for exit. */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit. */
  kill9(): Promise<void>;
}

/**
 * Starts `conductor <command> …` (of `bin`, another checkout's for benches) once it printed its
 * ready line; `spawnWith` starts it elsewhere (inside a test network's namespace).
 */
export async function startService(
  command: string,
  args: string[],
  env: Record<string, string>,
  bin = BIN,
  spawnWith: typeof spawn = spawn,
): Promise<ServiceProcess> {
  // With the heap settings a service would start itself again with (one Node start less).
  const proc = spawnWith(process.execPath, [...SERVICE_NODE_FLAGS, bin, command, ...args], {
    env: {
      PATH: process.env["PATH"] ?? "/usr/bin:/bin",
      // No web console unless a test asks for one (its default port is a fixed one; older
      // checkouts have none).
      ...(bin === BIN ? { CONDUCTOR_OBSERVABILITY_CONSOLE: "-1" } : {}),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  proc.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  const lines = createInterface({ input: proc.stdout });
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`conductor ${command} not ready in 30 s:\n${stderr}`)),
      30_000,
    );
    lines.on("line", (line) => {
      if (line.includes('"ready"')) {
        clearTimeout(timer);
        resolve(JSON.parse(line) as Record<string, unknown>);
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`conductor ${command} exited with ${code}:\n${stderr}`));
    });
  });
  const end = async (signal: NodeJS.Signals) => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
    await exited;
  };
  return {
    proc,
    stderr: () => stderr,
    ready,
    stop: () => end("SIGTERM"),
    kill9: () => end("SIGKILL"),
  };
}

/** A Conductor started for one test: its folders, its processes and a client. */
export interface Conductor extends AsyncDisposable {
  dir: string;
  socketDir: string;
  dataDir: string;
  client: Client<typeof OrchestratorService>;
  processes: ServiceProcess[];
  /** Starts the same services again on the same folders (after a stop or a kill). */
  restart(): Promise<void>;
  /** Split mode: starts the AgentHost again (after its kill), beside the running Orchestrator. */
  restartAgentHost(): Promise<void>;
  close(): Promise<void>;
}

/** Options of startConductor. */
export interface ConductorOptions {
  agents?: number;
  modelUrl: string;
  /** "up" (one process) or "split" (orchestrator and agent-host processes). */
  mode?: "up" | "split";
  /** runtime.backend: process (default), docker or podman. */
  runtime?: string;
  env?: Record<string, string>;
}

/** Starts Conductor on temp folders, pointed at the fake model. */
export async function startConductor(opts: ConductorOptions): Promise<Conductor> {
  const dir = mkdtempSync(path.join(tmpdir(), "conductor-e2e-"));
  const socketDir = path.join(dir, "run");
  const dataDir = path.join(dir, "data");
  // Where everything is, for every service; what the agents are, for those that run them.
  const where = ["--socket-dir", socketDir, "--data-dir", dataDir];
  const args = [
    ...where,
    "--runtime",
    opts.runtime ?? "process",
    "--agents",
    String(opts.agents ?? 3),
  ];
  const env = {
    ANTHROPIC_BASE_URL: opts.modelUrl,
    ANTHROPIC_API_KEY: "sk-test-key",
    CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
    // Free ports, so suites and a developer's own `conductor up` never collide.
    CONDUCTOR_OBSERVABILITY_METRICS_PORT: "0",
    CONDUCTOR_OBSERVABILITY_AGENT_HOST_METRICS_PORT: "0",
    CONDUCTOR_OBSERVABILITY_BROKER_METRICS_PORT: "0",
    ...runtimeEnv(),
    ...opts.env,
  };
  const c: Conductor = {
    dir,
    socketDir,
    dataDir,
    processes: [],
    client: createClient(
      OrchestratorService,
      unixTransport(path.join(socketDir, "orchestrator.sock")),
    ),
    async restart() {
      if (opts.mode === "split") {
        c.processes = [
          await startService("agent-host", args, env),
          await startService("orchestrator", where, env),
        ];
      } else {
        c.processes = [await startService("up", args, env)];
      }
    },
    async restartAgentHost() {
      if (opts.mode !== "split") throw new Error("restartAgentHost needs mode: split");
      c.processes[0] = await startService("agent-host", args, env);
    },
    async close() {
      for (const p of c.processes.reverse()) await p.stop();
      rmSync(dir, { recursive: true, force: true });
    },
    [Symbol.asyncDispose]: () => c.close(),
  };
  await c.restart();
  return c;
}

/**
 * The runtimes the end-to-end suites run on: CONDUCTOR_TEST_RUNTIMES (comma-separated),
 * by default all three. Container runtimes need their engine and the agent image
 * (deploy/engines/start-engines.sh, deploy/agent-image/build-offline.sh).
 */
export function testRuntimes(): string[] {
  return (process.env["CONDUCTOR_TEST_RUNTIMES"] ?? DEFAULT_RUNTIMES).split(",").filter(Boolean);
}
const DEFAULT_RUNTIMES = "process,docker,podman";

/** Environment a runtime needs in tests: the agent image, when CONDUCTOR_TEST_IMAGE names one. */
export function runtimeEnv(): Record<string, string> {
  const image = process.env["CONDUCTOR_TEST_IMAGE"];
  return {
    ...(image ? { CONDUCTOR_RUNTIME_IMAGE: image } : {}),
  };
}

/** Waits (event-driven, via WatchTask) until a task has ended, and returns it. */
export async function waitForEnd(
  client: Client<typeof OrchestratorService>,
  id: string,
  timeoutMs = 60_000,
): Promise<Task> {
  const signal = AbortSignal.timeout(timeoutMs);
  for await (const _ of client.watchTask({ id }, { signal })) {
    // drain: the stream ends when the task ends
  }
  return (await client.getTask({ id })).task!;
}

/** Waits until a task reaches `state` (or ends), following its events. */
export async function waitForState(
  client: Client<typeof OrchestratorService>,
  id: string,
  state: TaskState,
  timeoutMs = 30_000,
): Promise<void> {
  const signal = AbortSignal.timeout(timeoutMs);
  for await (const { event } of client.watchTask({ id }, { signal })) {
    if (event?.kind.case === "stateChange" && event.kind.value.state === state) return;
  }
  throw new Error(`task ${id} ended without reaching ${TaskState[state]}`);
}

/**
 * Re-checks `probe` until it gives a value (not undefined), at most `timeoutMs`; for
 * conditions nothing announces (an engine's state). Bounded in time, with a short pause.
 */
export async function eventually<T>(
  probe: () => Promise<T | undefined>,
  what: string,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Pids of live processes whose environment holds `marker` (e.g. CONDUCTOR_TASK_ID=…). */
export function processesWith(marker: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const environ = readFileSync(`/proc/${entry}/environ`, "utf8").split("\0");
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (environ.includes(marker) && !/\) Z /.test(stat)) pids.push(Number(entry));
    } catch {
      // gone already, or not ours to read
    }
  }
  return pids;
}

/** Live (not zombie) processes anywhere on the machine whose command line matches, as "pid: cmd". */
export function processesMatching(re: RegExp): string[] {
  const found: string[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ").trim();
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (re.test(cmd) && !/\) Z /.test(stat)) found.push(`${entry}: ${cmd}`);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** Milliseconds since the epoch of a protobuf timestamp. */
export function ms(t: { seconds: bigint; nanos: number } | undefined): number {
  return t ? Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6) : NaN;
}
