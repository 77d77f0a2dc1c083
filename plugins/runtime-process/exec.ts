import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import type { ExecRequest, Execution, ExitStatus } from "../runtime.ts";

const STDERR_TAIL = 4096;

/**
 * Starts a program in its own process group (the process backend: a plain local process
 * with its own workspace). Killing it kills everything it started.
 */
export function execProcess(spec: ExecRequest): Execution {
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

/** Live processes whose environment holds `marker` ("KEY=value"). */
export function markedPids(marker: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/environ`, "utf8").split("\0").includes(marker)) {
        pids.push(Number(entry));
      }
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

/** Signals every process whose environment holds `marker`; returns how many it found. */
export function killMarked(marker: string, signal: NodeJS.Signals): number {
  const pids = markedPids(marker);
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // ended meanwhile
    }
  }
  return pids.length;
}
