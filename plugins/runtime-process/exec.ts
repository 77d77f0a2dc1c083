import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, readdirSync, readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { setTimeout as delay } from "node:timers/promises";
import { MAX_LINE_BYTES, splitLines } from "../lines.ts";
import type { ExecRequest, Execution, ExitStatus } from "../runtime.ts";

const STDERR_TAIL = 4096;

/** How the program is started and how its processes are found to end them. */
export type ExecMode =
  /**
   * argv is a bwrap command line: the sandbox's pid namespace holds every process of the run.
   * `netnsFd`, a network namespace's file descriptor, is the program's fd 3 (for nsenter).
   * `lifelinePipe`: the program's fd 4 is a socket pair's end whose other only this process
   * holds, and never writes to: it reads its end when this process dies (index.ts
   * SANDBOX_LAUNCHER), or when the run has ended here.
   */
  | { sandboxed: true; netnsFd?: number | undefined; lifelinePipe?: boolean }
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
  // Sandboxed: fd 3 the network namespace (or none), fd 4 the lifeline's end.
  const fds: (number | "pipe" | "ignore")[] = mode.sandboxed
    ? [mode.netnsFd ?? "ignore", ...(mode.lifelinePipe ? (["pipe"] as const) : [])]
    : [];
  const child = spawn(cmd, args, {
    cwd: mode.sandboxed ? "/" : spec.cwd,
    env: spec.env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe", ...fds],
  });
  // What comes on the lifeline (only the run's own processes could write) is never consumed:
  // Node holds at most a buffer's worth and reads no more. Its end goes with the run.
  const lifeline = mode.sandboxed && mode.lifelinePipe ? child.stdio[4] : undefined;
  lifeline?.on("error", () => undefined);
  const pid = child.pid;
  // Out of file descriptors (EMFILE) the pipes may not exist; the failure comes as an event.
  const { stdout: out, stderr: err } = child;
  if (!out || !err) {
    lifeline?.destroy();
    return unstarted(child);
  }
  let stderr = "";
  err.setEncoding("utf8");
  err.on("data", (d: string) => {
    stderr = (stderr + d).slice(-STDERR_TAIL);
  });
  const listeners: ((line: string) => void)[] = [];
  const stdoutClosed = splitLines(
    out,
    (line) => listeners.forEach((fn) => fn(line)),
    () => {
      stderr += `\nconductor: the run printed a line over ${MAX_LINE_BYTES} bytes on stdout and was ended`;
      if (mode.sandboxed) killSandbox(pid).catch(() => undefined);
      else sweep("SIGKILL").catch(() => undefined);
    },
  );
  const stderrClosed = new Promise<void>((resolve) => err.once("close", resolve));

  const sweep = async (signal: NodeJS.Signals) => {
    if (mode.sandboxed) return;
    killGroup(pid, signal);
    if (spec.marker) await killMarked(spec.marker, signal);
  };
  let done = false;
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once("error", (spawnError) => {
      lifeline?.destroy();
      resolve({ code: null, signal: null, spawnError });
    });
    child.once("exit", (code, signal) => {
      done = true;
      lifeline?.destroy();
      // The leader is gone; anything it left behind goes too (before the end is reported).
      const swept = sweep("SIGKILL").catch(() => undefined);
      // Let readline hand over the last lines before reporting the end.
      const report = () => {
        if (code === 127 && /launcher: cannot start/.test(stderr)) {
          resolve({ code, signal: null, spawnError: new Error(stderr.trim()) });
        } else resolve({ code, signal });
      };
      Promise.all([stdoutClosed, stderrClosed, swept]).then(report, report);
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
        // A kill that comes while bwrap still sets up finds nothing yet: it looks again until
        // the run's program is there to TERM (or the run ended, or the grace is over). Killing
        // bwrap then instead would free the sandbox: --die-with-parent is not yet in force.
        const deadline = performance.now() + graceMs;
        const term = async () => {
          while (!done && performance.now() < deadline) {
            let termed = false;
            for (const p of await descendants(pid, 2))
              if (!(await isSocat(p)) && signalPid(p, "SIGTERM")) termed = true;
            if (termed) return;
            await delay(10);
          }
        };
        void term().catch(() => undefined);
      } else await sweep("SIGTERM").catch(() => undefined);
      const timer = setTimeout(() => {
        if (mode.sandboxed) killSandbox(pid).catch(() => undefined);
        else sweep("SIGKILL").catch(() => undefined);
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

/** O_CLOEXEC, as /proc/PID/fdinfo/FD's octal `flags` line shows it (Linux, every arch Node runs on). */
const O_CLOEXEC = 0o2000000;

/**
 * Closes the file descriptors this process was started with beyond stdin, stdout and stderr
 * (and Node's IPC channel): the ones without close-on-exec, which every program it starts
 * inherits — a run's sandbox too, where an agent can take them from its own processes
 * (pidfd_getfd). What Node, libuv and SQLite open themselves is close-on-exec. A wrapper that
 * left one open (`exec 200>lock; flock 200`, a CI runner's pipe) leaks nothing to agents so.
 * Returns the numbers closed. Linux only (/proc/self/fdinfo); elsewhere it closes none.
 */
export function closeInheritedFds(): number[] {
  const ipc = Number(process.env["NODE_CHANNEL_FD"] ?? -1);
  const closed: number[] = [];
  let fds: string[];
  try {
    fds = readdirSync("/proc/self/fdinfo");
  } catch {
    return closed;
  }
  for (const name of fds) {
    const fd = Number(name);
    if (!Number.isInteger(fd) || fd <= 2 || fd === ipc) continue;
    try {
      const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"));
      if (!m || (parseInt(m[1]!, 8) & O_CLOEXEC) !== 0) continue;
      closeSync(fd);
      closed.push(fd);
    } catch {
      // gone meanwhile (the listing's own descriptor)
    }
  }
  return closed;
}

/** Most processes descendants() walks: a run forking without end is ended by other means. */
const MAX_TREE = 4096;
/** Most /proc files read at once while looking for marked processes. */
const READ_CONCURRENCY = 16;

/**
 * Every live descendant of `root` at least `minDepth` generations below it (at most MAX_TREE),
 * read from each process's /proc/PID/task/TID/children: only the run's own tree is read, never
 * the whole of /proc, and off the event loop. A kernel without those files (no
 * CONFIG_PROC_CHILDREN) gives none: a sandboxed kill() then skips SIGTERM and ends the sandbox
 * after its grace, as bubblewrap's death ends everything in it.
 */
export async function descendants(root: number | undefined, minDepth = 1): Promise<number[]> {
  if (!root) return [];
  const out: number[] = [];
  let level = [root];
  let seen = 0;
  for (let depth = 1; level.length > 0 && seen < MAX_TREE; depth++) {
    const next = (await Promise.all(level.map(childrenOf))).flat().slice(0, MAX_TREE - seen);
    seen += next.length;
    if (depth >= minDepth) out.push(...next);
    level = next;
  }
  return out;
}

/** The children of every thread of `pid` (empty once it is gone). */
async function childrenOf(pid: number): Promise<number[]> {
  try {
    const tasks = await readdir(`/proc/${pid}/task`);
    const lists = await Promise.all(
      tasks.map((t) => readFile(`/proc/${pid}/task/${t}/children`, "utf8").catch(() => "")),
    );
    return lists.flatMap((l) => l.split(" ").filter(Boolean).map(Number));
  } catch {
    return []; // ended meanwhile
  }
}

/**
 * Ends a bubblewrap sandbox at once, at whatever stage bwrap is (`pid`: bwrap, the leader of its
 * own process group). Its children are its pid namespaces' inits: SIGKILL to an init ends every
 * process of that namespace. Killing bwrap alone while one is still being set up would orphan
 * it (--die-with-parent is not yet in force), holding the run's pipes for ever. A child it makes
 * meanwhile is still in bwrap's group (its session comes last, just before the program), so
 * the group's SIGKILL takes it too.
 */
export async function killSandbox(pid: number | undefined): Promise<void> {
  if (!pid) return;
  const inits = await childrenOf(pid);
  try {
    killGroup(pid, "SIGKILL");
  } catch {
    signalPid(pid, "SIGKILL"); // not a group leader after all
  }
  for (const p of inits) signalPid(p, "SIGKILL");
}

/** Whether `pid` runs socat (a program that names itself so is spared a TERM, not the KILL). */
async function isSocat(pid: number): Promise<boolean> {
  try {
    return (await readFile(`/proc/${pid}/comm`, "utf8")) === "socat\n";
  } catch {
    return false;
  }
}

/** Signals one process; false when it is gone (or was never started). */
function signalPid(pid: number | undefined, signal: NodeJS.Signals): boolean {
  if (!pid) return false;
  try {
    return process.kill(pid, signal);
  } catch {
    return false; // ended meanwhile
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

/**
 * Live processes whose environment holds `marker` ("KEY=value"). Reads every process's
 * environment, READ_CONCURRENCY at a time and off the event loop: a run's end never blocks it.
 */
export async function markedPids(marker: string): Promise<number[]> {
  const entries = (await readdir("/proc")).filter(
    (e) => /^\d+$/.test(e) && Number(e) !== process.pid,
  );
  const pids: number[] = [];
  for (let i = 0; i < entries.length; i += READ_CONCURRENCY) {
    const batch = entries.slice(i, i + READ_CONCURRENCY);
    const envs = await Promise.all(
      // gone, or not ours to read: ""
      batch.map((e) => readFile(`/proc/${e}/environ`, "utf8").catch(() => "")),
    );
    envs.forEach((env, j) => {
      if (env.split("\0").includes(marker)) pids.push(Number(batch[j]));
    });
  }
  return pids;
}

/** Signals every process whose environment holds `marker`; resolves to how many it found. */
export async function killMarked(marker: string, signal: NodeJS.Signals): Promise<number> {
  const pids = await markedPids(marker);
  for (const pid of pids) signalPid(pid, signal);
  return pids.length;
}
