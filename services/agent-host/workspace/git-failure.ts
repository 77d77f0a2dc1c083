import { Code } from "@connectrpc/connect";
import { ChangeTooBig, WorkspaceError } from "./errors.ts";

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

/** "Unable to create '….lock': File exists", "cannot lock ref" (not "is at X but expected Y"). */
export function isLockContention(stderr: string): boolean {
  if (/but expected|reference already exists/.test(stderr)) return false;
  return /Unable to create '[^']*\.lock': File exists|cannot lock ref|could not lock config file|Another git process seems to be running/.test(
    stderr,
  );
}

/**
 * Whether the attempt's work cannot be saved for what the agent left in its worktree: `git add`
 * refused it (exited 128: a file its attributes cannot convert, say), it is more than a commit
 * may take (ChangeTooBig), or reading it took git longer than its timeout (so many files that
 * every try would); rather than the machine failing it (a lock, a full or failing disk).
 */
export function workNotSavable(e: unknown): boolean {
  for (let c = e, depth = 0; c instanceof Error && depth < 5; c = c.cause, depth++) {
    if (c instanceof ChangeTooBig) return true;
    if (!(c instanceof GitFailure)) continue;
    const sub = subcommand(c.args);
    if (c.timedOut) return sub === "add" || sub === "status";
    return (
      sub === "add" &&
      c.code === 128 &&
      !isLockContention(c.stderr) &&
      !/No space left|unable to write|Input\/output error|Read-only file system/i.test(c.stderr)
    );
  }
  return false;
}

/**
 * A GitFailure leaving this module as a WorkspaceError saying what was being done:
 * UNAVAILABLE when git's lock stayed taken (after the retries), else INTERNAL with git's
 * reason. Other errors (already WorkspaceErrors, aborts, file system errors) pass as they are.
 */
export function asWorkspaceError(e: unknown, doing: string): unknown {
  if (!(e instanceof GitFailure)) return e;
  const locked = isLockContention(e.stderr);
  return new WorkspaceError(
    `git ${subcommand(e.args)} failed while ${doing} (${lastLine(e.stderr)})` +
      (locked
        ? ": its lock stayed taken; retry, and remove the lock file if no git process runs"
        : ""),
    locked ? Code.Unavailable : Code.Internal,
    { cause: e },
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
