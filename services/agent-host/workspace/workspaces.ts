import { lstat, mkdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import type { AgentOwner } from "../../shared/agent-files.ts";
import type { Logger } from "../../shared/log.ts";
import { quote } from "../../shared/quote.ts";
import { Cache } from "./cache.ts";
import { changedFiles } from "./change.ts";
import { commitMessage, commitTree, pushBranch, type Author, type Committed } from "./commit.ts";
import { badInput, notReady, WorkspaceError } from "./errors.ts";
import { Git } from "./git.ts";
import { KeyedMutex } from "./mutex.ts";
import { formatPatch } from "./patch.ts";
import { Records, type WorkspaceRecord } from "./record.ts";
import { checkRef, checkTaskId, oneLine, parseSource, type Source } from "./source.ts";
import type { Change, GitWorkspaceRequest, Prepared } from "./types.ts";
import {
  addWorktree,
  checkout,
  isFolder,
  onWorktree,
  ownWorktree,
  removeWorktree,
  snapshot,
} from "./worktree.ts";

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
}

/**
 * Git workspaces of tasks on this node: a cached clone per repository, a detached worktree per
 * attempt, the agent's changes committed on the task's result branch (and pushed when asked)
 * before the worktree goes. The agent owns every byte of its worktree, `.git` included: git is
 * only ever pointed at the admin dir recorded before the agent ran, with hooks, fsmonitor and
 * the system and global configs off. One AgentHost owns a data folder.
 */
export class Workspaces {
  private readonly git: Git;
  private readonly records: Records;
  private readonly reposDir: string;
  private readonly caches = new Map<string, Cache>();
  private readonly tasks = new KeyedMutex();
  /** Branch names git accepted (each is asked about once). */
  private readonly branchNames = new Set<string>();
  private readonly author: Author;
  private readonly log: Logger;

  constructor(o: WorkspacesOptions) {
    for (const [k, v] of [
      ["name", o.author.name],
      ["email", o.author.email],
    ] as const)
      if (v === "" || /[<>\0\r\n]/.test(v))
        throw badInput(`author.${k} ${quote(v)} cannot be a git identity`);
    this.author = { ...o.author };
    this.log = o.log;
    this.git = new Git(o.gitTimeoutMs ?? 10 * 60_000, o.log);
    this.reposDir = path.join(o.dataDir, "repos");
    this.records = new Records(path.join(o.dataDir, "workspaces"));
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
    if (req.branch !== "") await this.checkBranch(req.branch, signal);
    const cache = await this.refreshed(source, signal);
    return { commit: await cache.resolve(req.ref, signal) };
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
    const branch = req.branch === "" ? `conductor/${req.taskId}` : req.branch;
    await this.checkBranch(branch, signal);
    if (!path.isAbsolute(worktreePath))
      throw badInput(`worktree path ${quote(worktreePath)} is not absolute`);
    const worktree = path.normalize(worktreePath);
    return this.tasks.run(
      req.taskId,
      async () => {
        const left = await this.records.read(req.taskId);
        if (left) await this.settle(left, "", "cut short", true);
        if (await lstat(worktree).catch(() => undefined))
          throw notReady(
            `the worktree path ${quote(worktree)} already exists: give a new path`,
            false,
          );
        if (!(await stat(path.dirname(worktree)).catch(() => undefined))?.isDirectory())
          throw notReady(
            `the folder of the worktree path ${quote(worktree)} does not exist`,
            false,
          );
        const cache = this.cacheOf(source);
        const start = await this.startOf(cache, req, branch, signal);
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
        await this.records.write(rec);
        try {
          rec.adminDir = await addWorktree(this.git, cache, worktree, rec.startCommit, signal);
          await this.records.write(rec);
          await checkout(this.git, rec, signal);
          if (owner) {
            await ownWorktree(worktree, owner);
            // chown changed every file's ctime: refresh the index so finish does not rehash all
            await this.git.run(["update-index", "-q", "--refresh"], {
              ...onWorktree(rec, signal),
              ok: [0, 1],
            });
          }
          rec.phase = "ready";
          await this.records.write(rec);
        } catch (e) {
          await this.discard(rec); // the agent never ran: nothing to keep
          throw e;
        }
        this.log.info("workspace prepared", {
          taskId: rec.taskId,
          attempt: rec.attempt,
          worktree,
          start: rec.startCommit,
        });
        const { phase: _, ...prepared } = rec;
        return prepared;
      },
      signal,
    );
  }

  /**
   * Commits everything the agent changed in the worktree onto the result branch (message
   * `conductor: task <id>, attempt <n> (<outcome>)` with Conductor trailers), pushes it when
   * asked, then removes the worktree. When committing or pushing fails the worktree and its
   * record stay (recover() tries again) and the error is thrown; a worktree whose root was
   * replaced (by a link) is removed with nothing committed, and FAILED_PRECONDITION thrown.
   */
  async finish(p: Prepared, info: { sessionId: string; outcome: string }): Promise<Change> {
    return this.tasks.run(p.taskId, async () => {
      const rec = await this.records.read(p.taskId);
      if (!rec || rec.attempt !== p.attempt || rec.worktree !== p.worktree)
        throw notReady(
          `attempt ${p.attempt} of task ${p.taskId} has no workspace on this node (finished already?)`,
          true,
        );
      const change = await this.settle(rec, info.sessionId, info.outcome, false);
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
   * worktree for more to run in it (the task's checks); whatever changes after is not
   * committed: finish() then only removes it. Errors as finish().
   */
  async save(p: Prepared, info: { sessionId: string; outcome: string }): Promise<void> {
    await this.tasks.run(p.taskId, async () => {
      const rec = await this.records.read(p.taskId);
      if (!rec || rec.attempt !== p.attempt || rec.worktree !== p.worktree)
        throw notReady(
          `attempt ${p.attempt} of task ${p.taskId} has no workspace on this node (finished already?)`,
          true,
        );
      if (rec.phase !== "ready") return;
      await this.commitReady(
        this.cacheOf(parseSource(rec.repository)),
        rec,
        info.sessionId,
        info.outcome,
        false,
      );
    });
  }

  /**
   * At start: every worktree a killed AgentHost left gets its content committed (outcome
   * "recovered after a restart"), pushed when asked, and is removed; a record whose worktree is
   * gone is cleaned up. Errors are reported per task, never thrown for the whole.
   */
  async recover(): Promise<Array<{ taskId: string; change?: Change; error?: string }>> {
    const out: Array<{ taskId: string; change?: Change; error?: string }> = [];
    for (const taskId of await this.records.list()) {
      try {
        const change = await this.tasks.run(taskId, async () => {
          const rec = await this.records.read(taskId);
          return rec && (await this.settle(rec, "", RECOVERED, false));
        });
        out.push(change ? { taskId, change } : { taskId });
      } catch (e) {
        this.log.warn("workspace not recovered", { taskId, error: e });
        out.push({ taskId, error: e instanceof Error ? e.message : String(e) });
      }
    }
    return out;
  }

  /**
   * `git format-patch --stdout --binary -M base..head` of the cached clone of `repository`,
   * streamed as git writes it. FAILED_PRECONDITION when the cache or the commits are gone.
   */
  patch(
    repository: string,
    baseCommit: string,
    headCommit: string,
    signal?: AbortSignal,
  ): AsyncIterable<Buffer> {
    const cache = this.cacheOf(parseSource(repository));
    return formatPatch(this.git, cache, baseCommit, headCommit, signal);
  }

  /**
   * Brings a record to its end: commits and pushes what the worktree holds when the agent may
   * have run (`ready`), then removes the worktree and the record. Returns undefined when the
   * agent never ran or the worktree is gone. With `lenientPush` a failed push is logged, not
   * thrown (the commit is safe on the branch; the next attempt's push carries it).
   */
  private async settle(
    rec: WorkspaceRecord,
    sessionId: string,
    outcome: string,
    lenientPush: boolean,
  ): Promise<Change | undefined> {
    const cache = this.cacheOf(parseSource(rec.repository));
    if (
      rec.phase === "preparing" ||
      (rec.phase === "ready" && !(await lstat(rec.worktree).catch(() => undefined)))
    ) {
      await this.discard(rec);
      return undefined;
    }
    if (rec.phase === "ready") await this.commitReady(cache, rec, sessionId, outcome, lenientPush);
    const result = rec.result ?? { head: rec.startCommit, committed: false, pushed: false };
    const change: Change = {
      baseCommit: rec.baseCommit,
      headCommit: result.head,
      branch: rec.branch,
      files: await changedFiles(this.git, cache, rec.baseCommit, result.head),
      committed: result.committed,
      pushed: result.pushed,
    };
    await this.discard(rec);
    this.log.info("workspace finished", {
      taskId: rec.taskId,
      attempt: rec.attempt,
      outcome,
      ...result,
    });
    return change;
  }

  /**
   * Commits what a ready worktree holds onto the branch, pushes it when asked, and records that
   * (phase "removing"): from then on only removal is left, and nothing more is committed.
   */
  private async commitReady(
    cache: Cache,
    rec: WorkspaceRecord,
    sessionId: string,
    outcome: string,
    lenientPush: boolean,
  ): Promise<void> {
    if (!(await isFolder(rec.worktree))) {
      await this.discard(rec);
      throw notReady(
        `the worktree ${quote(rec.worktree)} of task ${rec.taskId} was replaced (by a link?): nothing of it was committed, and it was removed`,
        true,
      );
    }
    const tree = await snapshot(this.git, rec, this.log);
    const message = commitMessage(rec, sessionId, outcome);
    const done = await commitTree(this.git, cache, rec, tree, this.author, message);
    const pushed = await this.pushed(cache, rec, done, lenientPush);
    rec.phase = "removing";
    rec.result = { ...done, pushed };
    await this.records.write(rec);
  }

  private async pushed(
    cache: Cache,
    rec: WorkspaceRecord,
    done: Committed,
    lenient: boolean,
  ): Promise<boolean> {
    if (!rec.push) return false;
    if (!done.committed && (await cache.commitOf(`refs/heads/${rec.branch}`)) === "") return false;
    try {
      await pushBranch(this.git, cache, rec.branch);
      return true;
    } catch (e) {
      if (!lenient) throw e;
      this.log.warn("result branch not pushed; the next attempt pushes it", {
        taskId: rec.taskId,
        error: e,
      });
      return false;
    }
  }

  /** Removes the worktree (not following links), its admin dir, then the record. */
  private async discard(rec: WorkspaceRecord): Promise<void> {
    let adminDir = rec.adminDir;
    if (adminDir === "" && rec.phase === "preparing" && (await isFolder(rec.worktree))) {
      // Cut short right after `git worktree add`: its `.git` is git's (the agent never ran).
      const text = await readFile(path.join(rec.worktree, ".git"), "utf8").catch(() => "");
      adminDir = /^gitdir: (.+)$/m.exec(text)?.[1]?.trim() ?? "";
    }
    await removeWorktree({ ...rec, adminDir });
    await this.records.remove(rec.taskId);
  }

  /**
   * The task's base and this attempt's start: at the first attempt the base is `ref` now,
   * remembered in `refs/conductor/base/<taskId>`; later attempts start from the result branch.
   */
  private async startOf(
    cache: Cache,
    req: GitWorkspaceRequest,
    branch: string,
    signal?: AbortSignal,
  ): Promise<Pick<Prepared, "baseCommit" | "startCommit" | "startTree" | "branchWas">> {
    const baseRef = `refs/conductor/base/${req.taskId}`;
    try {
      await this.refreshed(cache.source, signal);
    } catch (e) {
      // A later attempt can go on from the cache while the source is out of reach.
      if (!(e instanceof WorkspaceError) || e.permanent || !(await cache.exists())) throw e;
      if ((await cache.commitOf(baseRef, signal)) === "") throw e;
      this.log.warn("repository not fetched; the task goes on from its cached base", {
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
      if (at < 0) throw await cache.unresolved(req.ref, signal);
      const [commit = "", tree = ""] = ids.slice(at, at + 2);
      if (was !== "" && !(await this.isAncestor(cache, was, commit, signal)))
        throw notReady(
          `the result branch ${quote(branch)} already holds work of another task on this node: name another branch`,
          true,
        );
      await cache.setRef(baseRef, commit, "", signal);
      return { baseCommit: commit, startCommit: commit, startTree: tree, branchWas: was };
    }, signal);
  }

  private async isAncestor(
    cache: Cache,
    a: string,
    b: string,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const r = await this.git.run(
      ["merge-base", "--is-ancestor", a, b],
      cache.call(signal, { ok: [0, 1] }),
    );
    return r.code === 0;
  }

  /** The source's cache, made or fetched now. */
  private async refreshed(source: Source, signal?: AbortSignal): Promise<Cache> {
    if (source.local) {
      const st = await stat(source.url).catch(() => undefined);
      if (!st)
        throw notReady(
          `repository ${quote(source.url)} does not exist on this node: give the path of a git repository`,
          true,
        );
      if (!st.isDirectory())
        throw notReady(
          `repository ${quote(source.url)} is not a folder: give the path of a git repository`,
          true,
        );
    }
    const cache = this.cacheOf(source);
    await mkdir(this.reposDir, { recursive: true, mode: 0o700 });
    await cache.refresh(signal);
    return cache;
  }

  private cacheOf(source: Source): Cache {
    let c = this.caches.get(source.key);
    if (!c) this.caches.set(source.key, (c = new Cache(source, this.reposDir, this.git, this.log)));
    return c;
  }

  /** INVALID_ARGUMENT unless `git check-ref-format --branch` accepts the name. */
  private async checkBranch(branch: string, signal?: AbortSignal): Promise<void> {
    const refused = badInput(
      `branch ${quote(branch)} is not a valid git branch name: use letters, digits, "/", "-", "_" and "." (no spaces, "..", "@{" or leading "-")`,
    );
    // eslint-disable-next-line no-control-regex
    if (branch.startsWith("-") || branch.startsWith("@") || /[\u0000-\u001f]/.test(branch))
      throw refused;
    await mkdir(this.reposDir, { recursive: true, mode: 0o700 });
    if (this.branchNames.has(branch)) return;
    const r = await this.git.run(["check-ref-format", "--branch", branch], {
      gitDir: this.reposDir, // not a repository: nothing is read
      signal,
      ok: [0, 1, 128],
    });
    if (r.code !== 0) throw refused;
    if (this.branchNames.size >= 10_000) this.branchNames.clear();
    this.branchNames.add(branch);
  }
}
