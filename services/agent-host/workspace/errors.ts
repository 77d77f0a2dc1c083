import { Code } from "@connectrpc/connect";
import { DomainError } from "../../shared/errors.ts";

/** What a WorkspaceError's code may be. */
export type WorkspaceCode =
  Code.InvalidArgument | Code.FailedPrecondition | Code.Unavailable | Code.Internal;

/**
 * A git workspace could not be checked, prepared, finished or patched. `code` is
 * INVALID_ARGUMENT (a bad repository string, ref or branch name), FAILED_PRECONDITION (the
 * source is missing, not git or unreachable; the ref does not resolve; the branch moved; a push
 * was refused), UNAVAILABLE (git took too long, or its locks stayed taken) or INTERNAL (git
 * failed for a reason this module does not know). `permanent` says no retry can help (the
 * repository or ref does not exist, a name is refused); transient failures are not permanent.
 * The message names the repository, ref or branch and says what to do.
 */
export class WorkspaceError extends DomainError {
  readonly permanent: boolean;
  constructor(
    message: string,
    code: WorkspaceCode,
    options: { permanent?: boolean; cause?: unknown } = {},
  ) {
    super(message, code, { cause: options.cause });
    this.permanent = options.permanent ?? code === Code.InvalidArgument;
  }
}

/** INVALID_ARGUMENT, permanent: a value no retry can make acceptable. */
export function badInput(message: string): WorkspaceError {
  return new WorkspaceError(message, Code.InvalidArgument, { permanent: true });
}

/** FAILED_PRECONDITION: the thing is not in a state to do it (`permanent` when it never will be). */
export function notReady(message: string, permanent: boolean, cause?: unknown): WorkspaceError {
  return new WorkspaceError(message, Code.FailedPrecondition, { permanent, cause });
}

/**
 * What an attempt left in its worktree is more than a commit may take (Workspaces' CommitBounds)
 * even with its largest files left out: nothing of it is committed. FAILED_PRECONDITION, not
 * permanent: another attempt may leave less.
 */
export class ChangeTooBig extends WorkspaceError {
  override name = "ChangeTooBig";
  /** `why`: which bound, and by how much (it ends the message). */
  constructor(why: string) {
    super(
      `the worktree's change is more than a commit may take, so nothing of it was committed: ${why}`,
      Code.FailedPrecondition,
      { permanent: false },
    );
  }
}
