import { mkdir, stat } from "node:fs/promises";
import type { Logger } from "../../shared/log.ts";
import { quote } from "../../shared/quote.ts";
import { Cache } from "./cache.ts";
import { badInput, notReady } from "./errors.ts";
import type { Git } from "./git.ts";
import type { Source } from "./source.ts";

/** This node's cached clones, one per repository, in `reposDir` (0700). */
export class Caches {
  readonly reposDir: string;
  private readonly git: Git;
  private readonly log: Logger;
  private readonly caches = new Map<string, Cache>();
  /** Branch names git accepted (each is asked about once). */
  private readonly branchNames = new Set<string>();

  constructor(reposDir: string, git: Git, log: Logger) {
    this.reposDir = reposDir;
    this.git = git;
    this.log = log;
  }

  /** The source's cache (made or not). */
  of(source: Source): Cache {
    let c = this.caches.get(source.key);
    if (!c) this.caches.set(source.key, (c = new Cache(source, this.reposDir, this.git, this.log)));
    return c;
  }

  /**
   * The source's cache, made or fetched now. A local path that does not exist or is no folder
   * is FAILED_PRECONDITION (permanent) before git is asked.
   */
  async refreshed(source: Source, signal?: AbortSignal): Promise<Cache> {
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
    const cache = this.of(source);
    await mkdir(this.reposDir, { recursive: true, mode: 0o700 });
    await cache.refresh(signal);
    return cache;
  }

  /** INVALID_ARGUMENT unless `git check-ref-format --branch` accepts the name. */
  async checkBranch(branch: string, signal?: AbortSignal): Promise<void> {
    const refused = badInput(
      `branch ${quote(branch)} is not a valid git branch name: use letters, digits, "/", "-", "_" and "." (no spaces, "..", "@{" or leading "-")`,
    );
    // eslint-disable-next-line no-control-regex
    if (branch.startsWith("-") || branch.startsWith("@") || /[\u0000-\u001f]/.test(branch))
      throw refused;
    if (this.branchNames.has(branch)) return;
    await mkdir(this.reposDir, { recursive: true, mode: 0o700 });
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
