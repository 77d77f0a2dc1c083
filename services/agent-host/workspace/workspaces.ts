import { lstat, stat } from "node:fs/promises";
import path from "node:path";
import type { AgentOwner } from "../../shared/agent-files.ts";
import type { Logger } from "../../shared/log.ts";
import { quote } from "../../shared/quote.ts";
import { Caches } from "./caches.ts";
import { changedFiles } from "./change.ts";
import type { Author } from "./commit.ts";
import { badInput, notReady } from "./errors.ts";
import { asWorkspaceError, Git } from "./git.ts";
import {
  commitReady,
  create,
  settle,
  settleLeft,
  settleOrSetAside,
  type LifeContext,
} from "./lifecycle.ts";
import { KeyedMutex } from "./mutex.ts";
import { formatPatch } from "./patch.ts";
import { Records, type WorkspaceRecord } from "./record.ts";
import { checkRef, checkTaskId, oneLine, parseSource } from "./source.ts";
import { startOf } from "./start.ts";
import type { Change, GitWorkspaceRequest, Prepared } from "./types.ts";
import { DEFAULT_COMMIT_BOUNDS, type CommitBounds } from "./worktree.ts";

/**
 * Where a node keeps the worktrees of attempts whose work can never be saved (git refuses what
 * their agent left there, or it is more than a commit may take): `<data>/unsaved/`.
 */
export function unsavedDir(dataDir: string): string {
  return path.join(dataDir, "unsaved");
}

/** The outcome a commit names when recover() saves a worktree a killed AgentHost left. */
export const RECOVERED = "recovered after a restart";

/** Options of Workspaces. */
export interface WorkspacesOptions {
  /** The AgentHost's data folder: caches in `repos/`, durable records in `workspaces/`. */
  dataDir: string;
  /** Author and committer of result commits. */
  author: Author;
  log: Logger;
  /** Bound of each git command, in ms (default 10 minutes). */
  gitTimeoutMs?: number;
  /** What an attempt's commit may take from its worktree (default DEFAULT_COMMIT_BOUNDS). */
  commitBounds?: CommitBounds;
}

/**
 * Git workspaces of tasks on this node: a cached clone per repository, a detached worktree per
 * attempt, the agent's changes committed on the task's result branch (and pushed when asked)
 * before the worktree goes. The agent owns every byte of its worktree, `.git` included: git is
 * only ever pointed at the admin dir recorded before the agent ran, with hooks, fsmonitor and
 * the system and global configs off. One AgentHost owns a data folder; a task's operations
 * run one at a time.
 */
export class Workspaces {
  private readonly c: LifeContext;
  private readonly tasks = new KeyedMutex();

  constructor(o: WorkspacesOptions) {
    for (const [k, v] of [
      ["name", o.author.name],
      ["email", o.author.email],
    ] as const)
      if (v === "" || /[<>\0\r\n]/.test(v))
        throw badInput(`author.${k} ${quote(v)} cannot be a git identity`);
    const git = new Git(o.gitTimeoutMs ?? 10 * 60_000, o.log);
    this.c = {
      git,
      caches: new Caches(path.join(o.dataDir, "repos"), git, o.log),
      records: new Records(path.join(o.dataDir, "workspaces")),
      author: { ...o.author },
      bounds: { ...(o.commitBounds ?? DEFAULT_COMMIT_BOUNDS) },
      unsavedDir: unsavedDir(o.dataDir),
      log: o.log,
    };
  }

  /**
   * Submit-time check: the source exists and is git (fetched into this node's cache), `ref`
   * resolves, `branch` is a valid branch name. Returns the commit `ref` names now. Throws
   * WorkspaceError naming the repository, ref or branch. Never changes the source.
   */
  async check(
    req: Pick<GitWorkspaceRequest, "repository" | "ref" | "branch">,
    signal?: AbortSignal,
  ): Promise<{ commit: string }> {
    const source = parseSource(req.repository);
    checkRef(req.ref);
    return guard(`checking repository ${quote(source.display)}`, async () => {
      if (req.branch !== "") await this.c.caches.checkBranch(req.branch, signal);
      const cache = await this.c.caches.refreshed(source, signal);
      return { commit: await cache.resolve(req.ref, signal) };
    });
  }

  /**
   * Prepares attempt `req.attempt` in a new detached worktree at `worktreePath` (absolute;
   * must not exist; its parent exists and is ours): at the task's base commit (fixed at its
   * first attempt), or at the result branch's head when earlier attempts left work there.
   * With `owner`, the worktree's files become the agent's (links not followed). A record left
   * by an attempt cut short is committed and removed first.
   */
  async prepare(
    req: GitWorkspaceRequest,
    worktreePath: string,
    owner?: AgentOwner,
    signal?: AbortSignal,
  ): Promise<Prepared> {
    checkTaskId(req.taskId);
    if (!Number.isInteger(req.attempt) || req.attempt < 1)
      throw badInput(`attempt ${req.attempt} of task ${req.taskId} is not a whole number from 1`);
    const source = parseSource(req.repository);
    checkRef(req.ref);
    if (!path.isAbsolute(worktreePath))
      throw badInput(`worktree path ${quote(worktreePath)} is not absolute`);
    const worktree = path.normalize(worktreePath);
    const branch = req.branch === "" ? `conductor/${req.taskId}` : req.branch;
    const doing = `preparing attempt ${req.attempt} of task ${req.taskId}`;
    const run = async (): Promise<Prepared> => {
      await this.c.caches.checkBranch(branch, signal);
      const left = await this.c.records.read(req.taskId);
      if (left) await settleLeft(this.c, left);
      if (await lstat(worktree).catch(() => undefined))
        throw notReady(
          `the worktree path ${quote(worktree)} already exists: give a new path`,
          false,
        );
      if (!(await stat(path.dirname(worktree)).catch(() => undefined))?.isDirectory())
        throw notReady(`the folder of the worktree path ${quote(worktree)} does not exist`, false);
      const cache = this.c.caches.of(source);
      const start = await startOf(
        this.c.git,
        this.c.caches,
        cache,
        req,
        branch,
        this.c.log,
        signal,
      );
      const rec: WorkspaceRecord = {
        taskId: req.taskId,
        attempt: req.attempt,
        agentId: oneLine(req.agentId),
        worktree,
        ...start,
        branch,
        repository: source.url,
        push: req.push,
        cache: cache.dir,
        adminDir: "",
        phase: "preparing",
      };
      await create(this.c, cache, rec, owner, signal);
      this.c.log.info("workspace prepared", {
        taskId: rec.taskId,
        attempt: rec.attempt,
        worktree,
        start: rec.startCommit,
      });
      const { phase: _, ...prepared } = rec;
      return prepared;
    };
    return this.tasks.run(req.taskId, () => guard(doing, run), signal);
  }

  /**
   * Commits everything the agent changed in the worktree onto the result branch (message
   * `conductor: task <id>, attempt <n> (<outcome>)` with Conductor trailers), pushes it when
   * asked, then removes the worktree. When committing or pushing fails the worktree and its
   * record stay (recover() tries again) and the error is thrown; a worktree whose root was
   * replaced (by a link) is removed with nothing committed, and FAILED_PRECONDITION thrown.
   * Call it once nothing of the agent runs any more.
   */
  async finish(p: Prepared, info: { sessionId: string; outcome: string }): Promise<Change> {
    return this.withRecord(p, "finishing", async (rec) => {
      const change = await settle(this.c, rec, info.sessionId, info.outcome, false);
      if (!change)
        throw notReady(
          `the worktree ${quote(p.worktree)} of task ${p.taskId} is gone: nothing was committed`,
          true,
        );
      return change;
    });
  }

  /**
   * Commits (and pushes, when asked) what the attempt's worktree holds now, and keeps the
   * worktree for more to run in it (the task's checks): whatever changes after is not
   * committed, and finish() then only removes it. Errors as finish().
   */
  async save(p: Prepared, info: { sessionId: string; outcome: string }): Promise<void> {
    await this.withRecord(p, "saving", async (rec) => {
      if (rec.phase === "ready")
        await commitReady(this.c, rec, info.sessionId, info.outcome, false);
    });
  }

  /**
   * What the task's branch holds now (base..branch head), for a result when finish() failed
   * after work was committed (a refused push, say); undefined when the branch has nothing.
   * Never throws.
   */
  async changeOn(p: Prepared): Promise<Change | undefined> {
    try {
      const cache = this.c.caches.of(parseSource(p.repository));
      const head = await cache.commitOf(`refs/heads/${p.branch}`);
      if (head === "") return undefined;
      return {
        baseCommit: p.baseCommit,
        headCommit: head,
        branch: p.branch,
        ...(await changedFiles(this.c.git, cache, p.baseCommit, head)),
        committed: head !== p.startCommit,
        pushed: false,
      };
    } catch {
      return undefined;
    }
  }

  /** Runs `fn` on the record of attempt `p`, alone for its task; none (finished?) is an error. */
  private withRecord<T>(
    p: Prepared,
    doing: string,
    fn: (rec: WorkspaceRecord) => Promise<T>,
  ): Promise<T> {
    return this.tasks.run(p.taskId, () =>
      guard(`${doing} attempt ${p.attempt} of task ${p.taskId}`, async () => {
        const rec = await this.c.records.read(p.taskId);
        if (!rec || rec.attempt !== p.attempt || rec.worktree !== p.worktree)
          throw notReady(
            `attempt ${p.attempt} of task ${p.taskId} has no workspace on this node (finished already?)`,
            true,
          );
        return fn(rec);
      }),
    );
  }

  /**
   * At start: every worktree a killed AgentHost left gets its content committed (outcome
   * "recovered after a restart"), pushed when asked, and is removed; a record whose worktree is
   * gone is cleaned up. Errors are reported per task, never thrown for the whole. Call it
   * before any agent of those tasks runs again. With `only`, those tasks' records alone (the
   * others may be of attempts running now).
   */
  async recover(
    only?: readonly string[],
  ): Promise<Array<{ taskId: string; change?: Change; error?: string }>> {
    const out: Array<{ taskId: string; change?: Change; error?: string }> = [];
    for (const taskId of await this.c.records.list()) {
      if (only && !only.includes(taskId)) continue;
      try {
        const change = await this.tasks.run(taskId, () =>
          guard(`recovering the worktree of task ${taskId}`, async () => {
            const rec = await this.c.records.read(taskId);
            return rec && (await settleOrSetAside(this.c, rec, RECOVERED, false));
          }),
        );
        out.push(change ? { taskId, change } : { taskId });
      } catch (e) {
        this.c.log.warn("workspace not recovered", { taskId, error: e });
        out.push({ taskId, error: e instanceof Error ? e.message : String(e) });
      }
    }
    return out;
  }

  /**
   * `git format-patch --stdout --binary -M base..head` of the cached clone of `repository`,
   * streamed as git writes it (chunks of up to 64 KiB, pulled). FAILED_PRECONDITION when the
   * cache or the commits are gone; INTERNAL when git fails half-way. Stopping early or
   * aborting stops git.
   */
  patch(
    repository: string,
    baseCommit: string,
    headCommit: string,
    signal?: AbortSignal,
  ): AsyncIterable<Buffer> {
    const cache = this.c.caches.of(parseSource(repository));
    return formatPatch(this.c.git, cache, baseCommit, headCommit, signal);
  }
}

/** Runs fn, a GitFailure escaping it becoming a WorkspaceError saying what was being done. */
async function guard<T>(doing: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw asWorkspaceError(e, doing);
  }
}
