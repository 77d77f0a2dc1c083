import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { MAX_LINE_BYTES, splitLines } from "../lines.ts";
import type { ExecRequest, Execution, ExitStatus } from "../runtime.ts";

const STDERR_TAIL = 4096;

/** How the program is started and how its processes are found to end them. */
export type ExecMode =
  /** argv is a bwrap command line: the sandbox's pid namespace holds every process of the run. */
  | { sandboxed: true }
  /** A plain local process (the operator's opt-out): its group and its marker find its processes. */
  | { sandboxed: false };

/**
 * Starts a program (the process backend). Sandboxed, `argv` is a bubblewrap command line:
 * when its first process exits the kernel ends the whole pid namespace, and killing bwrap
 * kills the namespace (--die-with-parent), so nothing of the run can outlive it, however it
 * was started. Unsandboxed, the program gets its own process group, and what carries the
 * exec's marker is ended with it (a clean environment escapes that: hence the sandbox).
 */
export function execProcess(
  spec: ExecRequest,
  mode: ExecMode,
): Execution & { pid: number | undefined } {
  const [cmd, ...args] = spec.argv;
  if (!cmd) throw new Error("execProcess: empty argv");
  const child = spawn(cmd, args, {
    cwd: mode.sandboxed ? "/" : spec.cwd,
    env: spec.env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const pid = child.pid;
  // Out of file descriptors (EMFILE) the pipes may not exist; the failure comes as an event.
  if (!child.stdout || !child.stderr) return unstarted(child);
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (d: string) => {
    stderr = (stderr + d).slice(-STDERR_TAIL);
  });
  const listeners: ((line: string) => void)[] = [];
  const stdoutClosed = splitLines(
    child.stdout,
    (line) => listeners.forEach((fn) => fn(line)),
    () => {
      stderr += `\nconductor: the run printed a line over ${MAX_LINE_BYTES} bytes on stdout and was ended`;
      if (mode.sandboxed) signalPid(pid, "SIGKILL");
      else sweep("SIGKILL");
    },
  );
  const stderrClosed = new Promise<void>((resolve) => child.stderr.once("close", resolve));

  const sweep = (signal: NodeJS.Signals) => {
    if (mode.sandboxed) return;
    killGroup(pid, signal);
    if (spec.marker) killMarked(spec.marker, signal);
  };
  let done = false;
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once("error", (spawnError) => resolve({ code: null, signal: null, spawnError }));
    child.once("exit", (code, signal) => {
      done = true;
      // The leader is gone; anything it left behind goes too.
      sweep("SIGKILL");
      // Let readline hand over the last lines before reporting the end.
      const report = () => {
        if (code === 127 && /launcher: cannot start/.test(stderr)) {
          resolve({ code, signal: null, spawnError: new Error(stderr.trim()) });
        } else resolve({ code, signal });
      };
      Promise.all([stdoutClosed, stderrClosed]).then(report, report);
    });
  });

  return {
    pid,
    onStdoutLine: (fn) => void listeners.push(fn),
    pause: () => void child.stdout?.pause(),
    resume: () => void child.stdout?.resume(),
    stderrTail: () => stderr,
    exited,
    kill: async (graceMs = 2000) => {
      child.stdout?.resume(); // its end is read from the stream
      if (done) return exited;
      if (mode.sandboxed) {
        // TERM for everything the run started (not bwrap itself, which would end it at once);
        // then bwrap's death takes the namespace with it.
        // Depth 1 is bwrap's init inside the namespace: it, too, is left to the end, and so
        // are the launcher's socat (its lifeline and model: index.ts SANDBOX_LAUNCHER).
        for (const p of descendants(pid, 2)) if (!isSocat(p)) signalPid(p, "SIGTERM");
      } else sweep("SIGTERM");
      const timer = setTimeout(() => {
        if (mode.sandboxed) signalPid(pid, "SIGKILL");
        else sweep("SIGKILL");
      }, graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** A child whose pipes could not be made: it never runs; exited carries the reason. */
function unstarted(child: ChildProcess): Execution & { pid: number | undefined } {
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once("error", (spawnError) => resolve({ code: null, signal: null, spawnError }));
    child.once("exit", (code, signal) => resolve({ code, signal }));
  });
  return {
    pid: child.pid,
    onStdoutLine: () => undefined,
    pause: () => undefined,
    resume: () => undefined,
    stderrTail: () => "",
    exited,
    kill: async () => {
      child.kill("SIGKILL");
      return exited;
    },
  };
}

/** Every live descendant of `root` at least `minDepth` generations below it, from /proc. */
export function descendants(root: number | undefined, minDepth = 1): number[] {
  if (!root) return [];
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // "pid (comm) state ppid …": comm may hold spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch {
      // ended meanwhile
    }
  }
  const out: number[] = [];
  const stack: (readonly [number, number])[] = (children.get(root) ?? []).map((p) => [p, 1]);
  while (stack.length > 0) {
    const [p, depth] = stack.pop()!;
    if (depth >= minDepth) out.push(p);
    stack.push(...(children.get(p) ?? []).map((c) => [c, depth + 1] as const));
  }
  return out;
}

/** Whether `pid` runs socat (a program that names itself so is spared a TERM, not the KILL). */
function isSocat(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8") === "socat\n";
  } catch {
    return false;
  }
}

function signalPid(pid: number | undefined, signal: NodeJS.Signals): void {
  if (!pid) return;
  try {
    process.kill(pid, signal);
  } catch {
    // ended meanwhile
  }
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
  for (const pid of pids) signalPid(pid, signal);
  return pids.length;
}
