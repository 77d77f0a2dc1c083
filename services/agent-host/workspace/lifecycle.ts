import { lstat, mkdir, readdir, readFile, rename, unlink } from "node:fs/promises";
import path from "node:path";
import { removeTree, type AgentOwner } from "../../shared/agent-files.ts";
import type { Logger } from "../../shared/log.ts";
import { quote } from "../../shared/quote.ts";
import type { Cache } from "./cache.ts";
import type { Caches } from "./caches.ts";
import { changedFiles } from "./change.ts";
import { commitMessage, commitTree, pushBranch, type Author, type Committed } from "./commit.ts";
import { notReady } from "./errors.ts";
import { workNotSavable } from "./git-failure.ts";
import type { Git } from "./git.ts";
import type { Records, WorkspaceRecord } from "./record.ts";
import { parseSource } from "./source.ts";
import type { Change } from "./types.ts";
import {
  addWorktree,
  checkout,
  isFolder,
  ownWorktree,
  removeWorktree,
  NESTED_ASIDE,
  snapshot,
  type CommitBounds,
} from "./worktree.ts";

// A workspace record's life: `preparing` (made before the worktree, the agent has not run),
// `ready` (the agent may have changed it), `removing` (committed and pushed), then gone.

/** What the life of a record needs. */
export interface LifeContext {
  git: Git;
  caches: Caches;
  records: Records;
  author: Author;
  bounds: CommitBounds;
  /** Where worktrees whose work can never be saved are kept: `<data>/unsaved/`. */
  unsavedDir: string;
  log: Logger;
}

/**
 * Makes the worktree of a new record: the record first (durably), then `git worktree add`,
 * the admin dir into the record (read before the agent ever runs), the checkout, the files
 * given to `owner`, and the record `ready`. On failure everything made is removed.
 */
export async function create(
  c: LifeContext,
  cache: Cache,
  rec: WorkspaceRecord,
  owner: AgentOwner | undefined,
  signal?: AbortSignal,
): Promise<void> {
  await c.records.write(rec);
  try {
    rec.adminDir = await addWorktree(c.git, cache, rec.worktree, rec.startCommit, signal);
    await c.records.write(rec);
    await checkout(c.git, rec, signal);
    if (owner) await ownWorktree(rec.worktree, owner);
    rec.phase = "ready";
    await c.records.write(rec);
  } catch (e) {
    // The agent never ran: nothing to keep.
    await discard(c, rec).catch((e2: unknown) =>
      c.log.warn("a worktree not made could not be removed", { taskId: rec.taskId, error: e2 }),
    );
    throw e;
  }
}

/**
 * Brings a record to its end: commits and pushes what the worktree holds when the agent may
 * have run (`ready`), then removes the worktree and the record, in that order, so no work is
 * lost to a crash on the way (each step can be done again). Returns undefined when the agent
 * never ran or the worktree is gone. With `lenientPush` a failed push is logged, not thrown
 * (the commit is safe on the branch; the next attempt's push carries it).
 */
export async function settle(
  c: LifeContext,
  rec: WorkspaceRecord,
  sessionId: string,
  outcome: string,
  lenientPush: boolean,
): Promise<Change | undefined> {
  const cache = c.caches.of(parseSource(rec.repository));
  const there = await lstat(rec.worktree).catch(() => undefined);
  if (rec.phase === "preparing" || (rec.phase === "ready" && !there)) {
    await discard(c, rec);
    return undefined;
  }
  if (rec.phase === "ready") await commitReady(c, rec, sessionId, outcome, lenientPush);
  const result = rec.result ?? { head: rec.startCommit, committed: false, pushed: false };
  const change: Change = {
    baseCommit: rec.baseCommit,
    headCommit: result.head,
    branch: rec.branch,
    ...(await changedFiles(c.git, cache, rec.baseCommit, result.head)),
    committed: result.committed,
    pushed: result.pushed,
    ...(result.notCommitted ? { notCommitted: result.notCommitted } : {}),
  };
  await discard(c, rec);
  c.log.info("workspace finished", {
    taskId: rec.taskId,
    attempt: rec.attempt,
    outcome,
    ...result,
  });
  return change;
}

/**
 * Commits what a ready worktree holds onto the branch, pushes it when asked, and records that
 * (phase "removing"): from then on only its removal is left, and nothing more is committed.
 */
export async function commitReady(
  c: LifeContext,
  rec: WorkspaceRecord,
  sessionId: string,
  outcome: string,
  lenientPush: boolean,
): Promise<void> {
  const cache = c.caches.of(parseSource(rec.repository));
  if (!(await isFolder(rec.worktree))) {
    await discard(c, rec);
    throw notReady(
      `the worktree ${quote(rec.worktree)} of task ${rec.taskId} was replaced (by a link?): nothing of it was committed, and it was removed`,
      true,
    );
  }
  const { tree, notCommitted } = await snapshot(c.git, rec, c.bounds, c.log);
  const message = commitMessage(rec, sessionId, outcome);
  const done = await commitTree(c.git, cache, rec, tree, c.author, message);
  const pushed = await push(c, cache, rec, done, lenientPush);
  rec.phase = "removing";
  rec.result = { ...done, pushed, ...(notCommitted ? { notCommitted } : {}) };
  await c.records.write(rec);
}

/** Pushes the result branch when asked and there is one; false when not pushed. */
async function push(
  c: LifeContext,
  cache: Cache,
  rec: WorkspaceRecord,
  done: Committed,
  lenient: boolean,
): Promise<boolean> {
  if (!rec.push) return false;
  if (!done.committed && (await cache.commitOf(`refs/heads/${rec.branch}`)) === "") return false;
  try {
    await pushBranch(c.git, cache, rec.branch);
    return true;
  } catch (e) {
    if (!lenient) throw e;
    c.log.warn("result branch not pushed; the next attempt pushes it", {
      taskId: rec.taskId,
      error: e,
    });
    return false;
  }
}

/**
 * Settles a record as settle() does, but one whose work can never be saved (workNotSavable: git
 * refuses what its agent left, or it is more than a commit may take) has its worktree moved out
 * of every sandbox's sight instead, to `<data>/unsaved/<task id>-<ms>/`, kept whole; its admin
 * dir and record go, and undefined is returned. So such a worktree keeps neither the task's
 * next attempt nor this node's next start from going on.
 */
export async function settleOrSetAside(
  c: LifeContext,
  rec: WorkspaceRecord,
  outcome: string,
  lenientPush: boolean,
): Promise<Change | undefined> {
  try {
    return await settle(c, rec, "", outcome, lenientPush);
  } catch (e) {
    if (!workNotSavable(e) || !(await isFolder(rec.worktree))) throw e;
    const keptAt = await setAside(c.unsavedDir, rec.worktree, rec.taskId, [rec.worktree]);
    await discard(c, rec); // its admin dir and record: nothing is at the worktree's path now
    c.log.error(
      "the work of an attempt can never be saved on its branch: its worktree was moved out of every sandbox's sight, and is kept",
      { taskId: rec.taskId, attempt: rec.attempt, keptAt, error: e },
    );
    return undefined;
  }
}

/**
 * Moves `dir` out of every sandbox's sight, to `<unsaved>/<name>-<ms>/` (made 0700 if need be),
 * and returns where; `worktrees` (it, or the worktrees in it) are cut from git first: a
 * worktree's `.git` file names an admin dir that goes with its record, or is another attempt's
 * later (they are named after the worktree's folder), so git run in the copy would change that
 * attempt's index. A `.git` that is not a file is the agent's own (a repository it made), and
 * stays. A crash before the move leaves `dir` in place, as savable as before.
 */
export async function setAside(
  unsaved: string,
  dir: string,
  name: string,
  worktrees: string[],
): Promise<string> {
  await mkdir(unsaved, { recursive: true, mode: 0o700 });
  for (const worktree of worktrees) {
    const dotGit = path.join(worktree, ".git");
    if ((await lstat(dotGit).catch(() => undefined))?.isFile()) await unlink(dotGit);
  }
  const keptAt = path.join(unsaved, `${name}-${Date.now()}`);
  await rename(dir, keptAt);
  return keptAt;
}

/**
 * The record of an attempt cut short (prepare was called again without finish): its work is
 * committed onto the branch before the next attempt starts from there. A worktree that cannot
 * be committed because it was replaced is gone with its record, and one whose work can never be
 * saved is set aside (settleOrSetAside): the next attempt goes on.
 */
export async function settleLeft(c: LifeContext, left: WorkspaceRecord): Promise<void> {
  try {
    await settleOrSetAside(c, left, "cut short", true);
  } catch (e) {
    if (await c.records.read(left.taskId)) throw e;
    c.log.warn("the worktree of an attempt cut short was not committed", {
      taskId: left.taskId,
      attempt: left.attempt,
      error: e,
    });
  }
}

/** Removes the worktree (not following links), its admin dir, then the record. */
export async function discard(c: LifeContext, rec: WorkspaceRecord): Promise<void> {
  let adminDir = rec.adminDir;
  if (adminDir === "" && rec.phase === "preparing" && (await isFolder(rec.worktree))) {
    // Cut short right after `git worktree add`: its `.git` is git's (the agent never ran).
    const text = await readFile(path.join(rec.worktree, ".git"), "utf8").catch(() => "");
    adminDir = /^gitdir: (.+)$/m.exec(text)?.[1]?.trim() ?? "";
  }
  await removeWorktree({ ...rec, adminDir });
  // A nested repository's .git a crash left moved aside, in the task's own folder.
  const parent = path.dirname(rec.worktree);
  if (path.basename(parent) === rec.taskId) {
    const aside = await readdir(parent).catch(() => []);
    await removeTree(
      ...aside.filter((n) => n.startsWith(NESTED_ASIDE)).map((n) => path.join(parent, n)),
    );
  }
  await c.records.remove(rec.taskId);
}
