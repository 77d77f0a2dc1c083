import { create } from "@bufbuild/protobuf";
import { CheckResultSchema, type Check, type CheckResult } from "../../gen/conductor/v1/task_pb.js";
import type { ExecRequest, Execution } from "../../plugins/runtime.ts";

/** Bytes of a check's output kept for its result (the end of it). */
export const CHECK_TAIL_BYTES = 4096;
/** Characters of one output line kept (the rest of a longer line is dropped). */
const MAX_LINE = 1024;
/** The longest delay setTimeout keeps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** What running a task's checks takes. */
export interface CheckRun {
  checks: readonly Check[];
  /** Runs one program in the agent's sandbox (its exec, with the run's own folders). */
  exec: (req: ExecRequest) => Promise<Execution>;
  cwd: string;
  /** The environment of a check: the CLI's, less its model and key settings. */
  env: Record<string, string>;
  /** A check with timeout_seconds 0 gets this long. */
  defaultTimeoutMs: number;
  marker: string;
  signal: AbortSignal;
  /** The attempt they run in (CheckResult.attempt). */
  attempt: number;
  /** Told when ending a check took its whole sandbox (ExitStatus.sandboxKilled). */
  onSandboxKilled?: () => void;
}

/**
 * Runs the checks in order with `sh -c` in the workspace, stderr joined to stdout, each to
 * its end or its timeout; stops at the first that fails (or when `signal` aborts). Returns
 * one result per check that ran.
 */
export async function runChecks(r: CheckRun): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  for (const check of r.checks) {
    if (r.signal.aborted) break;
    const result = await runCheck(r, check);
    results.push(result);
    if (!result.passed) break;
  }
  return results;
}

async function runCheck(r: CheckRun, check: Check): Promise<CheckResult> {
  const started = Date.now();
  const timeoutMs = Math.min(
    MAX_TIMER_MS,
    check.timeoutSeconds > 0 ? check.timeoutSeconds * 1000 : r.defaultTimeoutMs,
  );
  const tail = new Tail(CHECK_TAIL_BYTES);
  const result = (exitCode: number, timedOut = false) =>
    create(CheckResultSchema, {
      command: check.command,
      exitCode,
      durationMs: BigInt(Date.now() - started),
      outputTail: tail.text(),
      timedOut,
      passed: exitCode === 0 && !timedOut,
      attempt: r.attempt,
    });
  let x: Execution;
  try {
    x = await r.exec({
      argv: ["/bin/sh", "-c", `exec 2>&1\n${check.command}`],
      cwd: r.cwd,
      env: r.env,
      marker: r.marker,
    });
  } catch (e) {
    tail.push(`conductor: the check could not be started: ${(e as Error).message}`);
    return result(-1);
  }
  x.onStdoutLine((line) => tail.push(line));
  let timedOut = false;
  const stop = () => void x.kill().catch(() => undefined);
  const timer = setTimeout(() => {
    timedOut = true;
    stop();
  }, timeoutMs);
  r.signal.addEventListener("abort", stop);
  try {
    const exit = await x.exited;
    // (A container's exec reports exit 127 as a spawn error: the shell ran, and said why.)
    if (exit.spawnError && tail.text() === "")
      tail.push(`conductor: the check could not be started: ${exit.spawnError.message}`);
    if (timedOut) tail.push(`conductor: ended after its timeout of ${timeoutMs / 1000} s`);
    else if (r.signal.aborted) tail.push("conductor: ended, the task was cancelled");
    if (exit.sandboxKilled) {
      tail.push(
        "conductor: no process could start in the container to end it (paused, or its pids limit full): the container was killed",
      );
      r.onSandboxKilled?.();
    }
    return result(exit.code ?? -1, timedOut);
  } finally {
    clearTimeout(timer);
    r.signal.removeEventListener("abort", stop);
  }
}

/** The last `max` bytes (about) of a stream of lines. */
class Tail {
  private lines: string[] = [];
  private size = 0;
  private readonly max: number;
  constructor(max: number) {
    this.max = max;
  }
  push(line: string): void {
    const l = line.length > MAX_LINE ? `${line.slice(0, MAX_LINE)}…` : line;
    this.lines.push(l);
    this.size += l.length + 1;
    while (this.size > this.max && this.lines.length > 1)
      this.size -= this.lines.shift()!.length + 1;
  }
  text(): string {
    return this.lines.join("\n");
  }
}

/** Check results a task's result keeps (those of the latest attempts). */
export const MAX_CHECK_RESULTS = 64;

/** The last attempt's first failed check, in words for an error: "check `npm test` failed (exit 1)". */
export function checkFailure(results: readonly CheckResult[]): string | undefined {
  const failed = lastFailed(results);
  if (!failed) return undefined;
  const how = failed.timedOut ? "timed out" : `exit ${failed.exitCode}`;
  return `check \`${failed.command}\` failed (${how})`;
}

/**
 * The prompt of an attempt that resumes the session whose check failed: what failed and the
 * end of its output, and what to do.
 */
export function fixPrompt(results: readonly CheckResult[]): string | undefined {
  const failed = lastFailed(results);
  if (!failed) return undefined;
  return [
    `The ${checkFailure(results)} after your changes.`,
    "The last lines of its output:",
    "```",
    failed.outputTail.split("\n").slice(-40).join("\n"),
    "```",
    "Find the cause and fix it, so that the check passes. The task is otherwise as before.",
  ].join("\n");
}

/** The failed check of the latest attempt that ran checks, if one failed. */
function lastFailed(results: readonly CheckResult[]): CheckResult | undefined {
  const latest = results.at(-1)?.attempt;
  return results.find((c) => c.attempt === latest && !c.passed);
}
