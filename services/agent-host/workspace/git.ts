import { spawn, type ChildProcess } from "node:child_process";
import { setTimeout as delay } from "node:timers/promises";
import { Code } from "@connectrpc/connect";
import type { Logger } from "../../shared/log.ts";
import { WorkspaceError } from "./errors.ts";

/** Where and how one git command runs. */
export interface GitCall {
  /** GIT_DIR: always given, never discovered (a worktree's `.git` is the agent's). */
  gitDir: string;
  /** GIT_WORK_TREE, for commands on a worktree. */
  workTree?: string;
  /** Extra environment (author and committer). */
  env?: Record<string, string>;
  /** Written to git's stdin. */
  input?: string;
  /** Talks to the source: the operator's global git config (credentials, ssh, proxies) applies. */
  network?: boolean;
  /** Exit codes that are not failures (default [0]). */
  ok?: number[];
  signal?: AbortSignal | undefined;
}

/** What a finished git command printed. */
export interface GitResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** A git command failed, timed out, or was aborted; `stderr` is its last 64 KiB. */
export class GitFailure extends Error {
  override name = "GitFailure";
  readonly args: readonly string[];
  readonly code: number | null;
  readonly stderr: string;
  readonly timedOut: boolean;
  readonly stdout: string;
  constructor(
    args: readonly string[],
    code: number | null,
    stderr: string,
    timedOut: boolean,
    stdout = "",
  ) {
    super(
      `git ${subcommand(args)} ${timedOut ? "timed out" : `exited ${code}`}: ${lastLine(stderr)}`,
    );
    this.args = args;
    this.code = code;
    this.stderr = stderr;
    this.timedOut = timedOut;
    this.stdout = stdout;
  }
}

/** Settings that keep host-side git from running anything a repository or worktree names. */
const SAFE_CONFIG = [
  "core.hooksPath=/dev/null",
  "core.fsmonitor=false",
  "core.untrackedCache=false",
  "core.attributesFile=/dev/null",
  "core.excludesFile=/dev/null",
  "core.symlinks=true",
  "core.sparseCheckout=false",
  "submodule.recurse=false",
  "protocol.allow=never",
  "protocol.file.allow=always",
  "protocol.git.allow=always",
  "protocol.ssh.allow=always",
  "protocol.https.allow=always",
].flatMap((kv) => ["-c", kv]);

/** Transport settings of the operator kept for commands that reach the source. */
const KEPT_ENV = new Set(["GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSH_VARIANT"]);

/** "Unable to create '….lock': File exists", "cannot lock ref" (not "is at X but expected Y"). */
export function isLockContention(stderr: string): boolean {
  if (/but expected|reference already exists/.test(stderr)) return false;
  return /Unable to create '[^']*\.lock': File exists|cannot lock ref|could not lock config file|Another git process seems to be running/.test(
    stderr,
  );
}

const RETRIES = 8;
const MAX_STDERR = 64 * 1024;
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
        r.stdout.toString("utf8").slice(-MAX_STDERR),
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
      stderr = (stderr + d).slice(-MAX_STDERR);
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

function gitEnv(call: GitCall): NodeJS.ProcessEnv {
  // A child inherits this process's environment as any child does, without its GIT_* settings.
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("GIT_") || (call.network && KEPT_ENV.has(k))) env[k] = v;
  }
  Object.assign(env, {
    GIT_DIR: call.gitDir,
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_ATTR_NOSYSTEM: "1",
    GIT_ALLOW_PROTOCOL: "file:git:ssh:https",
    GIT_TERMINAL_PROMPT: "0",
    GIT_NO_REPLACE_OBJECTS: "1",
    LC_ALL: "C",
    LANGUAGE: "",
    ...(call.network ? {} : { GIT_CONFIG_GLOBAL: "/dev/null" }),
    ...(call.workTree ? { GIT_WORK_TREE: call.workTree } : {}),
    ...call.env,
  });
  return env;
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
    `git ${subcommand(args)} took longer than ${Math.round(ms / 1000)} s and was stopped; retry, or raise the git timeout if the repository is large or the network slow`,
    Code.Unavailable,
    { cause: new GitFailure(args, null, stderr, true) },
  );
}

/** The git subcommand of an argument list (after any `-c k=v`). */
export function subcommand(args: readonly string[]): string {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "-c") i++;
    else return args[i] ?? "";
  }
  return "";
}

/** The last line git wrote that says why it failed ("fatal: …", "error: …"), else its last line. */
export function lastLine(stderr: string): string {
  const lines = stderr
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("hint:"));
  const why = lines.filter((l) => /^(fatal|error|remote: error|ERROR):?/i.test(l));
  return (why.at(-1) ?? lines.at(-1) ?? "").slice(0, 300);
}
