import { spawn } from "node:child_process";
import { open, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { bwrapArgv, type BwrapPlan } from "./bwrap.ts";
import { descendants, killSandbox } from "./exec.ts";

/** The loopback port the model is served on inside every process sandbox. */
export const MODEL_PORT = 8080;
/** /proc/net/tcp's line for 127.0.0.1:8080 listening: address and state (0A, LISTEN). */
const LISTENING = `0100007F:${MODEL_PORT.toString(16).toUpperCase().padStart(4, "0")} 0A`;
/** Longest a forwarder may take to listen (a loaded machine starts socat in 10–50 ms). */
const READY_MS = 10_000;
const STDERR_TAIL = 2048;
/**
 * Most connections forwarded at once (a socat process each); more wait to be taken. The model
 * proxy serves an agent at most 64 at once (services/agent-host/model-proxy.ts).
 */
const MAX_CONNECTIONS = 128;

/**
 * One agent's network namespace, held by its model forwarder: a bubblewrap sandbox of its own
 * (its own pid namespace, the agent's user, the system read-only and the model socket's folder)
 * running socat on 127.0.0.1:8080, forwarding each connection to the agent's model socket. Each
 * run is started in that namespace (nsenter on `fd`) instead of in a new one with a forwarder of
 * its own: a run is spared a socat start and the wait for it to listen (about 40 ms of CPU on a
 * 2-core machine: `node bench/process-runs.ts`). Its runs cannot see or signal the forwarder,
 * which lives in another pid namespace; they share only the loopback, as a container agent's
 * runs share its container's.
 */
export interface AgentNetwork {
  /** A descriptor of the namespace (open on /proc/PID/ns/net): it pins it while open. */
  fd: number;
  /**
   * Whether the forwarder still runs (its socat, and so its sandbox), and so `fd` is still open:
   * checked in the same turn of the event loop as the spawn that passes `fd` on (the descriptor
   * is closed only after the sandbox's end is seen, in a later turn). One signal 0, no I/O.
   */
  alive(): boolean;
  /**
   * Calls `fn` once when the forwarder ends (at once if it has); the returned function forgets
   * it (a run that ends first: nothing of it is held for as long as its agent's forwarder runs).
   */
  onEnd(fn: () => void): () => void;
  /** Ends the forwarder and lets go of the namespace. */
  close(): Promise<void>;
}

/**
 * Starts an agent's forwarder and resolves once it listens, with its namespace. Rejects with
 * what socat or bwrap said when it ends first, or after READY_MS. Only for an AgentHost running
 * as root (`user` given): it makes the namespace and then drops to the agent's user.
 */
export async function startAgentNetwork(
  modelSocket: string,
  user: NonNullable<BwrapPlan["user"]>,
  socatPath: (p: string) => string,
  /** bwrap's own environment, markers (not given to socat), e.g. {CONDUCTOR_SANDBOX: tag}. */
  marker: Record<string, string> = {},
): Promise<AgentNetwork> {
  const [cmd, ...args] = bwrapArgv({
    mounts: [{ hostPath: path.dirname(modelSocket), readOnly: true }],
    cwd: "/",
    user,
    unsetEnv: Object.keys(marker),
    argv: [
      "socat",
      `TCP-LISTEN:${MODEL_PORT},bind=127.0.0.1,fork,reuseaddr,max-children=${MAX_CONNECTIONS}`,
      `UNIX-CONNECT:${socatPath(modelSocket)}`,
    ],
  });
  const child = spawn(cmd!, args, {
    env: marker,
    detached: true,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (d: string) => (stderr = (stderr + d).slice(-STDERR_TAIL)));
  (child.stderr as (typeof child.stderr & { unref?: () => void }) | null)?.unref?.();
  child.unref(); // an AgentHost's end ends it (--die-with-parent); it keeps no process alive
  let exited = false;
  const watchers = new Set<() => void>();
  const ended = new Promise<void>((resolve) => {
    child.once("error", (e) => {
      stderr += e.message;
      exited = true;
      resolve();
    });
    child.once("exit", () => {
      exited = true;
      resolve();
    });
  });
  // Its sandbox dies with it, at whatever stage bwrap is.
  const kill = () => {
    if (!exited) killSandbox(child.pid).catch(() => undefined);
  };
  try {
    const deadline = performance.now() + READY_MS;
    for (;;) {
      if (exited) throw new Error(`the model forwarder ended: ${stderr.trim() || "no word"}`);
      if (performance.now() > deadline)
        throw new Error(`the model forwarder did not listen within ${READY_MS / 1000} s`);
      // bwrap's child: the sandbox's first process, in the new network namespace.
      const [inner] = await descendants(child.pid);
      // The sandbox's init's child: socat (setpriv execs it). Its pid is not used again before
      // the kernel has gone round every pid, so a signal 0 tells whether it still runs.
      const [socat] = inner ? await descendants(inner) : [];
      if (inner && socat && (await listens(inner))) {
        const handle = await open(`/proc/${inner}/ns/net`, "r");
        // Never the AgentHost's own: a run started in it would reach the network.
        const [theirs, ours] = await Promise.all([handle.stat(), stat("/proc/self/ns/net")]);
        if (exited || theirs.ino === ours.ino) {
          await handle.close();
          continue;
        }
        ended
          .then(() => {
            for (const fn of watchers) fn();
            watchers.clear();
            return handle.close();
          })
          .catch(() => undefined);
        return {
          fd: handle.fd,
          alive: () => !exited && runs(socat),
          onEnd: (fn) => {
            if (exited) {
              fn();
              return () => undefined;
            }
            watchers.add(fn);
            return () => void watchers.delete(fn);
          },
          close: async () => {
            kill();
            await ended;
          },
        };
      }
      await delay(5);
    }
  } catch (e) {
    kill();
    throw e;
  }
}

/** Whether process `pid` exists (root may signal any). */
function runs(pid: number): boolean {
  try {
    return process.kill(pid, 0);
  } catch {
    return false;
  }
}

/** Whether 127.0.0.1:MODEL_PORT listens in the network namespace of `pid`. */
async function listens(pid: number): Promise<boolean> {
  try {
    return (await readFile(`/proc/${pid}/net/tcp`, "utf8")).split("\n").some((l) => {
      const f = l.trim().split(/\s+/);
      return `${f[1]} ${f[3]}` === LISTENING;
    });
  } catch {
    return false; // gone
  }
}
