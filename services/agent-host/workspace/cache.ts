import { mkdir, rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "../../shared/log.ts";
import { quote } from "../../shared/quote.ts";
import { notReady, type WorkspaceError } from "./errors.ts";
import { GitFailure, type Git, type GitCall } from "./git.ts";
import { Mutex } from "./mutex.ts";
import { sourceError } from "./source-error.ts";
import type { Source } from "./source.ts";

/** Where the source's HEAD is kept after each fetch (outside refs/remotes: --prune would drop it). */
const ORIGIN_HEAD = "refs/conductor/origin-head";

/**
 * One repository's cached bare clone on this node, `<dataDir>/repos/<key>.git`: the source's
 * branches under refs/remotes/origin/, its tags under refs/tags/, the result branches under
 * refs/heads/ (a fetch never touches them), task bases under refs/conductor/base/. Operations
 * on its shared state (fetch, refs, worktree registration) run under its mutex.
 */
export class Cache {
  readonly dir: string;
  readonly mutex = new Mutex();
  /** Fetch tickets: the last one asked for, the last one a fetch covered, and failed. */
  private asked = 0;
  private fetched = 0;
  private failed: { covers: number; error: unknown } | undefined;

  readonly source: Source;
  private readonly git: Git;
  private readonly log: Logger;

  constructor(source: Source, reposDir: string, git: Git, log: Logger) {
    this.source = source;
    this.git = git;
    this.log = log;
    this.dir = path.join(reposDir, `${source.key}.git`);
  }

  /** A git call on the cache. */
  call(signal?: AbortSignal, extra: Partial<GitCall> = {}): GitCall {
    return { gitDir: this.dir, signal, ...extra };
  }

  /** The clone exists (it is renamed into place only once complete). */
  async exists(): Promise<boolean> {
    return (await stat(this.dir).catch(() => undefined))?.isDirectory() === true;
  }

  /**
   * Makes the clone if it is missing, then fetches the source's branches, tags and HEAD. Callers
   * asking while a fetch runs share the next one: each gets a fetch that began after it asked,
   * and its failure (20 tasks of an unreachable source wait for one timeout, not 20).
   */
  async refresh(signal?: AbortSignal): Promise<void> {
    const ticket = ++this.asked;
    await this.mutex.run(async () => {
      if (this.fetched >= ticket) return;
      if (this.failed && this.failed.covers >= ticket) throw this.failed.error;
      const covers = this.asked;
      try {
        if (await this.exists()) await this.fetch(this.dir, signal);
        else await this.create(signal);
        this.fetched = covers;
      } catch (e) {
        // (a fetch stopped by this caller's own signal says nothing to the others)
        if (!signal?.aborted) this.failed = { covers, error: e };
        throw e;
      }
    }, signal);
  }

  private async create(signal?: AbortSignal): Promise<void> {
    const tmp = `${this.dir}.tmp`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true, mode: 0o700 });
    try {
      const call = { gitDir: tmp, signal };
      await this.git.run(["init", "--quiet", "--bare", "--template="], call);
      for (const [k, v] of [
        ["remote.origin.url", this.source.url],
        ["gc.autoDetach", "false"], // a gc runs inside the fetch, under the mutex
        ["gc.worktreePruneExpire", "never"], // never prune a running task's worktree
        ["core.logAllRefUpdates", "false"],
      ] as const)
        await this.git.run(["config", k, v], call);
      await this.fetch(tmp, signal);
      await rename(tmp, this.dir);
      this.log.info("cached a repository", { repository: this.source.display, cache: this.dir });
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  private async fetch(dir: string, signal?: AbortSignal): Promise<void> {
    const args = [
      "fetch",
      "--quiet",
      "--prune",
      "--no-tags",
      "--no-write-fetch-head",
      "--no-recurse-submodules",
      "origin",
      "+refs/heads/*:refs/remotes/origin/*",
      "+refs/tags/*:refs/tags/*",
    ];
    const call = { gitDir: dir, signal, network: true };
    try {
      await this.git.run([...args, `+HEAD:${ORIGIN_HEAD}`], call);
    } catch (e) {
      if (!(e instanceof GitFailure) || !/couldn't find remote ref HEAD/.test(e.stderr))
        throw sourceError(this.source, e);
      // HEAD names no commit (an empty repository, or HEAD on a missing branch): the rest is usable.
      await this.git.run(args, call).catch((e2: unknown) => {
        throw sourceError(this.source, e2);
      });
      await this.git.run(["update-ref", "-d", ORIGIN_HEAD], { gitDir: dir, signal });
    }
  }

  /**
   * The names `ref` may stand for, in order: a branch of the source, a tag, a commit id ("" and
   * "HEAD": the source's HEAD).
   */
  static candidates(ref: string): string[] {
    if (ref === "" || ref === "HEAD") return [ORIGIN_HEAD];
    return [
      `refs/remotes/origin/${ref.replace(/^refs\/heads\//, "")}`,
      ref.startsWith("refs/tags/") ? ref : `refs/tags/${ref}`,
      ...(/^[0-9a-fA-F]{4,64}$/.test(ref) ? [ref.toLowerCase()] : []),
    ];
  }

  /**
   * The commit `ref` names: one of the source's branches, else a tag, else a commit id; "" is
   * the source's HEAD. FAILED_PRECONDITION (permanent) when it names none.
   */
  async resolve(ref: string, signal?: AbortSignal): Promise<string> {
    const names = Cache.candidates(ref);
    const found = await this.lookup(
      names.map((n) => `${n}^{commit}`),
      signal,
    );
    const at = found.findIndex((c) => c !== "");
    const commit = found[at];
    if (commit === undefined || !(await this.fromSource(names[at]!, commit, signal)))
      throw await this.unresolved(ref, signal);
    return commit;
  }

  /**
   * Whether what `name` resolved to is the source's: a branch or tag of it is; a commit id only
   * when one of its branches or tags holds that commit — not one only this node's clone has
   * (another task's result), which no task may start from.
   */
  async fromSource(name: string, commit: string, signal?: AbortSignal): Promise<boolean> {
    if (name.startsWith("refs/")) return true;
    const holders = await this.git.text(
      [
        "for-each-ref",
        "--count=1",
        `--contains=${commit}`,
        "--format=%(refname)",
        "refs/remotes/origin/",
        "refs/tags/",
      ],
      this.call(signal),
    );
    return holders.trim() !== "";
  }

  /** FAILED_PRECONDITION (permanent): `ref` names nothing in the source; some branches named. */
  async unresolved(ref: string, signal?: AbortSignal): Promise<WorkspaceError> {
    const where = `repository ${quote(this.source.display)}`;
    if (ref === "" || ref === "HEAD")
      return notReady(
        `${where} has no commit at HEAD (it is empty, or HEAD names a missing branch): name a branch, tag or commit`,
        true,
      );
    const branches = (
      await this.git.text(
        ["for-each-ref", "--count=5", "--format=%(refname:lstrip=3)", "refs/remotes/origin/"],
        this.call(signal),
      )
    )
      .split("\n")
      .filter(Boolean);
    const some = branches.length > 0 ? ` (its branches include ${branches.join(", ")})` : "";
    return notReady(
      `ref ${quote(ref)} is not a branch, tag or commit of ${where}${some}: give an existing branch, tag or commit id`,
      true,
    );
  }

  /**
   * The object ids of revisions (`refs/x^{commit}`, `<id>^{tree}`), "" for each that names
   * nothing: all in one `git cat-file --batch-check`.
   */
  async lookup(revisions: readonly string[], signal?: AbortSignal): Promise<string[]> {
    const out = await this.git.text(
      ["cat-file", "--batch-check=%(objectname)"],
      this.call(signal, { input: revisions.map((r) => r + "\n").join("") }),
    );
    const lines = out.split("\n");
    return revisions.map((_, i) => {
      const l = lines[i] ?? "";
      return /^[0-9a-f]{40}([0-9a-f]{24})?$/.test(l) ? l : "";
    });
  }

  /** The commit a ref or revision names, or "" when there is none. */
  async commitOf(name: string, signal?: AbortSignal): Promise<string> {
    return (await this.lookup([`${name}^{commit}`], signal))[0] ?? "";
  }

  /** Sets `ref` to `value` if it still is `old` ("" = must not exist); call under the mutex. */
  async setRef(ref: string, value: string, old: string, signal?: AbortSignal): Promise<void> {
    await this.git.run(["update-ref", "--no-deref", ref, value, old], this.call(signal));
  }
}
