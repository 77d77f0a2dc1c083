import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";

/** What to run: argv, folder and the whole environment (nothing is inherited). */
export interface ExecSpec {
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  /**
   * An environment entry ("KEY=value") unique to this execution. Programs that leave the
   * process group (the CLI starts its shells in groups of their own) still inherit it, so
   * ending the execution ends them too.
   */
  marker?: string;
}

/** How an execution ended. */
export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Set when the program could not be started at all. */
  spawnError?: Error;
}

/** A running program: its output as lines, its end, and a way to end its whole process group. */
export interface Execution {
  pid: number | undefined;
  onStdoutLine(fn: (line: string) => void): void;
  /** The last few KiB of stderr, for error messages. */
  stderrTail(): string;
  /** Resolves when the process and everything in its group has ended. */
  exited: Promise<ExitStatus>;
  /** SIGTERM to the group, SIGKILL after graceMs; resolves when it is gone. */
  kill(graceMs?: number): Promise<ExitStatus>;
}

const STDERR_TAIL = 4096;

/**
 * Starts a program in its own process group (the process backend: a plain local process
 * with its own workspace). Killing it kills everything it started.
 */
export function execProcess(spec: ExecSpec): Execution {
  const [cmd, ...args] = spec.argv;
  if (!cmd) throw new Error("execProcess: empty argv");
  const child = spawn(cmd, args, {
    cwd: spec.cwd,
    env: spec.env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const pgid = child.pid;
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (d: string) => {
    stderr = (stderr + d).slice(-STDERR_TAIL);
  });
  const lines = createInterface({ input: child.stdout, crlfDelay: Infinity });
  const listeners: ((line: string) => void)[] = [];
  lines.on("line", (line) => listeners.forEach((fn) => fn(line)));
  const stdoutClosed = new Promise<void>((resolve) => lines.once("close", resolve));

  const exited = new Promise<ExitStatus>((resolve) => {
    child.once("error", (spawnError) => resolve({ code: null, signal: null, spawnError }));
    child.once("exit", (code, signal) => {
      // The leader is gone; anything it left behind goes too.
      killGroup(pgid, "SIGKILL");
      if (spec.marker) killMarked(spec.marker, "SIGKILL");
      // Let readline hand over the last lines before reporting the end.
      void stdoutClosed.then(() => resolve({ code, signal }));
    });
  });

  return {
    pid: pgid,
    onStdoutLine: (fn) => void listeners.push(fn),
    stderrTail: () => stderr,
    exited,
    kill: async (graceMs = 2000) => {
      killGroup(pgid, "SIGTERM");
      if (spec.marker) killMarked(spec.marker, "SIGTERM");
      const timer = setTimeout(() => {
        killGroup(pgid, "SIGKILL");
        if (spec.marker) killMarked(spec.marker, "SIGKILL");
      }, graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Signals a whole process group; a group that is already gone is fine. */
export function killGroup(pgid: number | undefined, signal: NodeJS.Signals): void {
  if (!pgid) return;
  try {
    process.kill(-pgid, signal);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ESRCH") throw e;
  }
}

/** Signals every process whose environment holds `marker`; returns how many it found. */
export function killMarked(marker: string, signal: NodeJS.Signals): number {
  let found = 0;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let environ: string[];
    try {
      environ = readFileSync(`/proc/${entry}/environ`, "utf8").split("\0");
    } catch {
      continue; // gone, or not ours
    }
    if (!environ.includes(marker)) continue;
    found++;
    try {
      process.kill(Number(entry), signal);
    } catch {
      // ended meanwhile
    }
  }
  return found;
}
