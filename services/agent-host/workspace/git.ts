import { spawn, type ChildProcess } from "node:child_process";
import { setTimeout as delay } from "node:timers/promises";
import { Code } from "@connectrpc/connect";
import type { Logger } from "../../shared/log.ts";
import { WorkspaceError } from "./errors.ts";
import { gitEnv, SAFE_CONFIG, type GitCall } from "./git-env.ts";
import { GitFailure, isLockContention, subcommand } from "./git-failure.ts";

export type { GitCall } from "./git-env.ts";
export { asWorkspaceError, GitFailure, isLockContention, lastLine } from "./git-failure.ts";

/** What a finished git command printed. */
export interface GitResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

const RETRIES = 8;
/** How much of git's stderr (and of a failure's stdout) is kept. */
const MAX_OUTPUT = 64 * 1024;
const KILL_GRACE_MS = 5_000;

/**
 * Runs git with a clean environment: no GIT_* of this process, no system config, no global
 * config unless `network`, only the file, git, ssh and https transports, never a prompt; every
 * call bounded by `timeoutMs` and the caller's signal (git and its children are stopped).
 */
export class Git {
  private readonly timeoutMs: number;
  private readonly log: Logger;
  constructor(timeoutMs: number, log: Logger) {
    this.timeoutMs = timeoutMs;
    this.log = log;
  }

  /** Runs to the end; throws GitFailure on a failing exit (after retrying lock contention). */
  async run(args: readonly string[], call: GitCall): Promise<GitResult> {
    for (let attempt = 0; ; attempt++) {
      const r = await this.once(args, call);
      if ((call.ok ?? [0]).includes(r.code)) return r;
      if (attempt < RETRIES && isLockContention(r.stderr)) {
        this.log.debug("git lock contention, retrying", { args: subcommand(args), attempt });
        const ms = Math.min(2000, 20 * 2 ** attempt) * (0.5 + Math.random());
        await delay(ms, undefined, { signal: call.signal });
        continue;
      }
      throw new GitFailure(
        args,
        r.code,
        r.stderr,
        false,
        r.stdout.toString("utf8").slice(-MAX_OUTPUT),
      );
    }
  }

  /** Its trimmed stdout. */
  async text(args: readonly string[], call: GitCall): Promise<string> {
    return (await this.run(args, call)).stdout.toString("utf8").trim();
  }

  /**
   * Git's stdout as it comes, chunk by chunk (pulled: git waits while the consumer does not
   * read). Ends with a GitFailure when git fails; stopping early or aborting stops git.
   */
  async *stream(args: readonly string[], call: GitCall): AsyncGenerator<Buffer> {
    const p = this.start(args, call, true);
    try {
      for await (const chunk of p.child.stdout!) yield chunk as Buffer;
      const r = await p.done;
      if (!(call.ok ?? [0]).includes(r.code)) throw new GitFailure(args, r.code, r.stderr, false);
    } finally {
      p.stop();
      await p.done.catch(() => {});
    }
  }

  private async once(args: readonly string[], call: GitCall): Promise<GitResult> {
    const p = this.start(args, call, false);
    const out: Buffer[] = [];
    p.child.stdout!.on("data", (d: Buffer) => out.push(d));
    const r = await p.done;
    return { ...r, stdout: Buffer.concat(out) };
  }

  private start(args: readonly string[], call: GitCall, streaming: boolean) {
    call.signal?.throwIfAborted();
    const env = gitEnv(call);
    const child = spawn("git", [...SAFE_CONFIG, ...args], {
      cwd: call.gitDir,
      env,
      stdio: [call.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      detached: true, // its own process group: stopping it stops ssh and helpers too
    });
    if (call.input !== undefined) child.stdin!.end(call.input);
    child.stdin?.on("error", () => {}); // git may exit before reading it all
    let stderr = "";
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (d: string) => {
      stderr = (stderr + d).slice(-MAX_OUTPUT);
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      kill(child);
    }, this.timeoutMs);
    const onAbort = () => kill(child);
    call.signal?.addEventListener("abort", onAbort, { once: true });
    const t0 = performance.now();
    const done = new Promise<Omit<GitResult, "stdout">>((resolve, reject) => {
      child.once("error", (e) => {
        clearTimeout(timer);
        call.signal?.removeEventListener("abort", onAbort);
        reject(
          new WorkspaceError(
            `git cannot be started on this node (${e.message}): install git`,
            Code.Internal,
            {
              cause: e,
            },
          ),
        );
      });
      child.once("close", (code, sig) => {
        clearTimeout(timer);
        call.signal?.removeEventListener("abort", onAbort);
        this.log.debug("git", {
          args: subcommand(args),
          code,
          ms: Math.round(performance.now() - t0),
        });
        if (call.signal?.aborted) reject(call.signal.reason as Error);
        else if (timedOut) reject(timeout(args, stderr, this.timeoutMs));
        else resolve({ code: code ?? (sig ? 128 + 9 : 1), stderr });
      });
    });
    done.catch(() => {}); // observed by the caller; not an unhandled rejection meanwhile
    return {
      child,
      done,
      stop: () => (streaming && child.exitCode === null ? kill(child) : undefined),
    };
  }
}

/** Stops git and whatever it started: SIGTERM (git removes its lock files), SIGKILL later. */
function kill(child: ChildProcess): void {
  const group = (sig: NodeJS.Signals) => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, sig);
    } catch {
      // already gone
    }
  };
  if (child.exitCode !== null || child.signalCode !== null) return;
  group("SIGTERM");
  const hard = setTimeout(() => group("SIGKILL"), KILL_GRACE_MS);
  hard.unref();
  child.once("close", () => clearTimeout(hard));
}

function timeout(args: readonly string[], stderr: string, ms: number): WorkspaceError {
  return new WorkspaceError(
    `git ${subcommand(args)} took longer than ${ms < 10_000 ? `${ms} ms` : `${Math.round(ms / 1000)} s`} and was stopped; retry, or raise the git timeout if the repository is large or the network slow`,
    Code.Unavailable,
    { cause: new GitFailure(args, null, stderr, true) },
  );
}
