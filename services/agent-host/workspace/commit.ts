import { quote } from "../../shared/quote.ts";
import type { Cache } from "./cache.ts";
import { notReady, WorkspaceError, type WorkspaceCode } from "./errors.ts";
import { GitFailure, lastLine, type Git } from "./git.ts";
import { sourceError } from "./source-error.ts";
import { oneLine } from "./source.ts";
import type { Prepared } from "./types.ts";

/** Who commits: author and committer of every result commit. */
export interface Author {
  name: string;
  email: string;
}

/** What one attempt left on its branch. */
export interface Committed {
  /** The result branch's head ("" never: the start commit when nothing changed). */
  head: string;
  committed: boolean;
}

/** `conductor: task <id>, attempt <n> (<outcome>)` and the Conductor trailers. */
export function commitMessage(p: Prepared, sessionId: string, outcome: string): string {
  const lines = [
    `conductor: task ${p.taskId}, attempt ${p.attempt} (${oneLine(outcome)})`,
    "",
    `Conductor-Task: ${p.taskId}`,
    `Conductor-Attempt: ${p.attempt}`,
    `Conductor-Agent: ${oneLine(p.agentId)}`,
  ];
  if (sessionId !== "") lines.push(`Claude-Session: ${oneLine(sessionId)}`);
  return lines.join("\n") + "\n";
}

/**
 * Commits `tree` onto the result branch with the start commit as parent (no commit when the
 * tree is the start's), moving the branch only from the value it had when prepared. A commit
 * an earlier try of this same attempt already put there (same parent, same tree) is taken as
 * it is, so finishing again after a crash commits nothing twice.
 */
export async function commitTree(
  git: Git,
  cache: Cache,
  p: Prepared,
  tree: string,
  author: Author,
  message: string,
  signal?: AbortSignal,
): Promise<Committed> {
  const ref = `refs/heads/${p.branch}`;
  if (tree === p.startTree) return { head: p.startCommit, committed: false };
  const env = {
    GIT_AUTHOR_NAME: author.name,
    GIT_AUTHOR_EMAIL: author.email,
    GIT_COMMITTER_NAME: author.name,
    GIT_COMMITTER_EMAIL: author.email,
  };
  const commit = await git.text(
    ["commit-tree", "--no-gpg-sign", tree, "-p", p.startCommit, "-F", "-"],
    cache.call(signal, { env, input: message }),
  );
  return cache.mutex.run(async () => {
    const now = await cache.commitOf(ref, signal);
    if (now === p.branchWas) {
      await cache.setRef(ref, commit, p.branchWas, signal);
      return { head: commit, committed: true };
    }
    if (now !== "" && (await sameCommit(git, cache, now, p.startCommit, tree, signal)))
      return { head: now, committed: true };
    throw notReady(
      `the result branch ${quote(p.branch)} moved while task ${p.taskId} ran (is another task writing to it?): its work stays in the worktree ${p.worktree}; give tasks distinct branches`,
      false,
    );
  }, signal);
}

async function sameCommit(
  git: Git,
  cache: Cache,
  commit: string,
  parent: string,
  tree: string,
  signal?: AbortSignal,
): Promise<boolean> {
  const out = await git.text(["show", "-s", "--format=%P %T", commit], cache.call(signal));
  return out === `${parent} ${tree}`;
}

/**
 * Pushes the result branch to the source (`refs/heads/<branch>` to the same name), never
 * forced: pushing what is there already is a no-op, a later commit on top fast-forwards. A
 * branch the source has moved elsewhere is FAILED_PRECONDITION naming the branch.
 */
export async function pushBranch(
  git: Git,
  cache: Cache,
  branch: string,
  signal?: AbortSignal,
): Promise<void> {
  const ref = `refs/heads/${branch}`;
  try {
    await git.run(
      ["push", "--quiet", "--porcelain", "--no-verify", cache.source.url, `${ref}:${ref}`],
      cache.call(signal, { network: true }),
    );
  } catch (e) {
    if (!(e instanceof GitFailure)) throw e;
    const where = `repository ${quote(cache.source.display)}`;
    const said = e.stderr + "\n" + e.stdout;
    if (/non-fast-forward|fetch first|\[rejected\]/.test(said))
      throw notReady(
        `the branch ${quote(branch)} of ${where} has commits the result does not have, so it was not pushed (never forced): the result stays on this node; name another branch, or merge`,
        true,
        e,
      );
    if (/\[remote rejected\]/.test(said))
      throw notReady(
        `${where} refused the push of branch ${quote(branch)} (${lastLine(said)}): allow it there, or name another branch`,
        false,
        e,
      );
    const err = sourceError(cache.source, e);
    throw new WorkspaceError(
      `pushing branch ${quote(branch)}: ${err.message}`,
      err.code as WorkspaceCode,
      {
        permanent: err.permanent,
        cause: e,
      },
    );
  }
}
