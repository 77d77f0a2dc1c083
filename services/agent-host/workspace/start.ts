import type { Logger } from "../../shared/log.ts";
import { quote } from "../../shared/quote.ts";
import { Cache } from "./cache.ts";
import type { Caches } from "./caches.ts";
import { notReady, WorkspaceError } from "./errors.ts";
import type { Git } from "./git.ts";
import type { GitWorkspaceRequest, Prepared } from "./types.ts";

/** Where an attempt starts, and what the result branch was then. */
export type Start = Pick<Prepared, "baseCommit" | "startCommit" | "startTree" | "branchWas">;

/**
 * The task's base and this attempt's start, after fetching the source. At the first attempt
 * the base is what `ref` names now, remembered in `refs/conductor/base/<taskId>` for the
 * task's life; later attempts start from the result branch when it exists (work of earlier
 * attempts, recovered work included), else from the base, and go on from the cache when the
 * source cannot be reached for now. A result branch that holds another task's work (not an
 * ancestor of the base) is refused at the first attempt.
 */
export async function startOf(
  git: Git,
  caches: Caches,
  cache: Cache,
  req: GitWorkspaceRequest,
  branch: string,
  log: Logger,
  signal?: AbortSignal,
): Promise<Start> {
  const baseRef = `refs/conductor/base/${req.taskId}`;
  try {
    await caches.refreshed(cache.source, signal);
  } catch (e) {
    if (!(e instanceof WorkspaceError) || e.permanent || !(await cache.exists())) throw e;
    if ((await cache.commitOf(baseRef, signal)) === "") throw e;
    log.warn("repository not fetched; the task goes on from its cached base", {
      taskId: req.taskId,
      error: e,
    });
  }
  return cache.mutex.run(async () => {
    const names = [baseRef, `refs/heads/${branch}`, ...Cache.candidates(req.ref)];
    const ids = await cache.lookup(
      names.flatMap((n) => [`${n}^{commit}`, `${n}^{tree}`]),
      signal,
    );
    const [base = "", baseTree = "", was = "", wasTree = ""] = ids;
    if (base !== "")
      return was !== ""
        ? { baseCommit: base, startCommit: was, startTree: wasTree, branchWas: was }
        : { baseCommit: base, startCommit: base, startTree: baseTree, branchWas: "" };
    // The first attempt: the base is what `ref` names now, and stays the task's.
    const at = ids.findIndex((id, i) => i >= 4 && i % 2 === 0 && id !== "");
    if (at < 0 || !(await cache.fromSource(names[at / 2]!, ids[at]!, signal)))
      throw await cache.unresolved(req.ref, signal);
    const [commit = "", tree = ""] = ids.slice(at, at + 2);
    if (was !== "") {
      const r = await git.run(
        ["merge-base", "--is-ancestor", was, commit],
        cache.call(signal, { ok: [0, 1] }),
      );
      if (r.code !== 0)
        throw notReady(
          `the result branch ${quote(branch)} already holds work of another task on this node: name another branch`,
          true,
        );
    }
    await cache.setRef(baseRef, commit, "", signal);
    return { baseCommit: commit, startCommit: commit, startTree: tree, branchWas: was };
  }, signal);
}
