import { lchown, lstat, readdir, readFile, realpath, rename } from "node:fs/promises";
import path from "node:path";
import { Code } from "@connectrpc/connect";
import { removeTree, type AgentOwner } from "../../shared/agent-files.ts";
import type { Logger } from "../../shared/log.ts";
import { utf8Prefix } from "../../shared/output-bounds.ts";
import { quote } from "../../shared/quote.ts";
import type { Cache } from "./cache.ts";
import { ChangeTooBig, notReady, WorkspaceError } from "./errors.ts";
import type { Git, GitCall } from "./git.ts";
import type { NotCommitted, Prepared } from "./types.ts";

/**
 * A git call on a worktree: GIT_DIR is the admin dir recorded before the agent ran and
 * GIT_WORK_TREE the worktree, both explicit; the worktree's own `.git` (the agent's) is never
 * read. Runs in the admin dir (ours); git enters the worktree itself.
 */
export function onWorktree(
  p: Pick<Prepared, "adminDir" | "worktree">,
  signal?: AbortSignal,
): GitCall {
  return { gitDir: p.adminDir, workTree: p.worktree, signal };
}

/**
 * Registers a detached worktree of `commit` at `worktree` (under the cache's mutex; its files
 * are checked out later, outside it) and returns its admin dir, read from the `.git` file git
 * just wrote and checked to lie in `<cache>/worktrees/`.
 */
export async function addWorktree(
  git: Git,
  cache: Cache,
  worktree: string,
  commit: string,
  signal?: AbortSignal,
): Promise<string> {
  await cache.mutex.run(
    () =>
      git.run(
        ["worktree", "add", "--quiet", "--no-checkout", "--detach", worktree, commit],
        cache.call(signal),
      ),
    signal,
  );
  const text = await readFile(path.join(worktree, ".git"), "utf8");
  const named = /^gitdir: (.+)$/m.exec(text)?.[1]?.trim() ?? "";
  const admin = await realpath(path.resolve(worktree, named));
  if (!(await isAdminDirOf(cache.dir, admin)))
    throw new WorkspaceError(
      `git registered the worktree ${worktree} at ${admin}, outside ${cache.dir}/worktrees`,
      Code.Internal,
    );
  return admin;
}

/** Checks the worktree's files out at its HEAD (no hooks, no submodules). */
export async function checkout(git: Git, p: Prepared, signal?: AbortSignal): Promise<void> {
  await git.run(
    // (checkout.workers=0: one worker per core, which matters on slow file systems)
    ["-c", "checkout.workers=0", "reset", "--quiet", "--hard", "--no-recurse-submodules", "HEAD"],
    onWorktree(p, signal),
  );
}

/**
 * Gives the worktree and everything in it to `owner`, never following a link. Names are
 * handled as bytes: a file name that is not UTF-8 (Latin-1, say) is a name like any other.
 */
export async function ownWorktree(dir: string | Buffer, owner: AgentOwner): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true, encoding: "buffer" });
  for (let i = 0; i < entries.length; i += 64) {
    await Promise.all(
      entries.slice(i, i + 64).map(async (e) => {
        const p = Buffer.concat([Buffer.from(dir), Buffer.from("/"), e.name]);
        if (e.isDirectory()) await ownWorktree(p, owner);
        else await lchown(p, owner.uid, owner.gid);
      }),
    );
  }
  await lchown(dir, owner.uid, owner.gid);
}

/**
 * Stages everything in the worktree (`git add -A`: new, changed, deleted, links as links; the
 * repository's .gitignore honoured) and returns the tree id, with the paths git could not add
 * (notCommittedIn). Fails (FAILED_PRECONDITION) when the worktree's root is no longer a real
 * folder: nothing is read through a link.
 */
export async function snapshot(
  git: Git,
  p: Prepared,
  bounds: CommitBounds,
  log: Logger,
): Promise<{ tree: string; notCommitted: NotCommitted | undefined }> {
  await mustBeFolder(p.worktree);
  const hidden: Array<[Buffer, Buffer]> = [];
  let r: Awaited<ReturnType<Git["run"]>>;
  /** Left out of the commit: for their size, then nested too deep. */
  let keptOut: Buffer[];
  try {
    const { leftOut, nested } = await leftOutForSize(git, p, bounds, hidden);
    if (leftOut.length > 0)
      log.warn("files of the worktree are left out of its commit for their size", {
        taskId: p.taskId,
        files: leftOut
          .slice(0, MAX_NOT_COMMITTED)
          .map((f) => `${f.name.toString("utf8")} (${f.size} bytes)`),
        total: leftOut.length,
        maxFileBytes: bounds.maxFileBytes,
        maxChangeBytes: bounds.maxChangeBytes,
      });
    if (nested.length > 0)
      log.warn("repositories nested deeper than can be opened are left out of the commit", {
        taskId: p.taskId,
        repositories: nested.slice(0, MAX_NOT_COMMITTED).map((n) => n.toString("utf8")),
        maxDepth: MAX_NESTED_DEPTH,
      });
    // --ignore-errors: a path git cannot add (an unreadable file, say) is reported and skipped
    // instead of losing everything else. The pathspecs: everything (`:/`, the top) but what is
    // left out, each name as it is (literal, NUL-ended bytes).
    const pathspecs: Buffer[] = [Buffer.from(":/\0")];
    keptOut = [...leftOut.map((f) => f.name), ...nested];
    for (const name of keptOut) pathspecs.push(EXCLUDE, name, NUL);
    r = await git.run(
      ["add", "--all", "--ignore-errors", "--pathspec-from-file=-", "--pathspec-file-nul"],
      { ...onWorktree(p), input: Buffer.concat(pathspecs), ok: [0, 1] },
    );
  } finally {
    for (const [at, to] of hidden.reverse()) await rename(to, at).catch(() => undefined);
  }
  await checkStored(git, p, bounds);
  const notCommitted = withLeftOut(keptOut, await confirmed(git, p, notCommittedIn(r.stderr)));
  if (notCommitted)
    log.warn("some paths of the worktree could not be committed", {
      taskId: p.taskId,
      worktree: p.worktree,
      paths: notCommitted.paths,
      total: notCommitted.total,
    });
  await mustBeFolder(p.worktree);
  return { tree: await git.text(["write-tree"], onWorktree(p)), notCommitted };
}

const EXCLUDE = Buffer.from(":(exclude,literal)");
const NUL = Buffer.from([0]);

/** Bounds of what one attempt's commit takes from its worktree, in bytes. */
export interface CommitBounds {
  /** A file larger than this is left out of the commit (and named as not committed). */
  maxFileBytes: number;
  /**
   * The most the commit's new and changed files may take in all: the largest are left out
   * until the rest fits (at most MAX_LEFT_OUT of them, with those over maxFileBytes).
   */
  maxChangeBytes: number;
}

/**
 * The defaults: GitHub refuses a file over 100 MiB in a push, and a push over 2 GiB
 * (docs.github.com, "About large files on GitHub").
 */
export const DEFAULT_COMMIT_BOUNDS: CommitBounds = {
  maxFileBytes: 100 * 1024 ** 2,
  maxChangeBytes: 2 * 1024 ** 3,
};

/** A file of the worktree (its name as git gives it, bytes) and its size in bytes. */
interface Sized {
  name: Buffer;
  size: number;
}

/** Most files left out of a commit for their size; a change that needs more fails. */
export const MAX_LEFT_OUT = 1000;

/**
 * The files `git add --all` would take (untracked and not ignored, or changed; their sizes as
 * lstat gives them) that are left out for their size: each over `maxFileBytes`, then the
 * largest of the rest until what is left is within `maxChangeBytes`. Throws ChangeTooBig when
 * more than MAX_LEFT_OUT would have to be. Names are bytes, as git gives them.
 *
 * A link counts by its own size (its target's name), towards the change's bound only.
 *
 * A repository the agent made inside (git init, git clone, a scaffolder) would go in as a
 * gitlink to a commit nobody has: its `.git` is moved aside first (pushed onto `hidden`, to be
 * moved back after `git add`) so its files are listed, sized and committed instead, down to
 * MAX_NESTED_DEPTH levels of them; those deeper are returned as `nested` (`dir/`), to be left
 * out whole. More than MAX_NESTED in all is a change too big (ChangeTooBig).
 */
async function leftOutForSize(
  git: Git,
  p: Prepared,
  b: CommitBounds,
  hidden: Array<[Buffer, Buffer]>,
): Promise<{ leftOut: Sized[]; nested: Buffer[] }> {
  const root = Buffer.from(`${p.worktree}/`);
  for (let depth = 0; ; depth++) {
    const sizes = new ChangeSizes(b);
    const nested: Buffer[] = [];
    for await (const names of changedIn(git, p)) {
      const files: Buffer[] = [];
      for (const name of names) (name.at(-1) === 0x2f ? nested : files).push(name); // "dir/"
      if (hidden.length + nested.length > MAX_NESTED)
        throw new ChangeTooBig(`more than ${MAX_NESTED} git repositories are nested in it`);
      for (let i = 0; i < files.length; i += 64) {
        const batch = files.slice(i, i + 64);
        const stats = await Promise.all(
          batch.map((n) => lstat(Buffer.concat([root, n])).catch(() => undefined)),
        );
        for (const [k, st] of stats.entries()) {
          if (st?.isFile()) sizes.add(batch[k]!, st.size);
          else if (st?.isSymbolicLink()) sizes.add(batch[k]!, st.size, false);
          // anything else: gone, past PATH_MAX, or what git does not take (a FIFO, a socket)
        }
      }
    }
    const before = hidden.length;
    if (nested.length > 0 && depth < MAX_NESTED_DEPTH) await hideNested(p, nested, hidden);
    if (hidden.length === before) return { leftOut: sizes.leftOut(), nested };
  }
}

/**
 * What `git status` finds changed in the worktree (tracked files changed or deleted, untracked
 * ones not ignored, each file of an untracked folder, a nested repository as `dir/`), a batch of
 * names per chunk of its output, as bytes. Status refreshes the index as it goes, and writes
 * it: the agent's files were given to it (every inode's ctime and owner changed), and without
 * that `git add` would read and hash every tracked file again.
 */
async function* changedIn(git: Git, p: Prepared): AsyncGenerator<Buffer[]> {
  const listing = git.stream(
    [
      "status",
      "--porcelain=v2",
      "-z",
      "--untracked-files=all",
      "--no-renames",
      "--ignore-submodules=all",
    ],
    onWorktree(p),
  );
  for await (const records of namesIn(listing)) {
    const names: Buffer[] = [];
    for (const r of records) {
      // "? <path>": untracked; "1 <XY> <sub> <mH> <mI> <mW> <hH> <hI> <path>": tracked, changed
      // (https://git-scm.com/docs/git-status#_porcelain_format_version_2; no "2" with
      // --no-renames, no "u" outside a merge, "#" headers only with --branch).
      const untracked = r[0] === 0x3f;
      if (!untracked && r[0] !== 0x31) continue;
      const fields: Buffer[] = [];
      let at = 0;
      for (let f = 0; f < (untracked ? 1 : 8); f++) {
        const end = r.indexOf(0x20, at);
        if (end < 0) break;
        fields.push(r.subarray(at, end));
        at = end + 1;
      }
      if (fields.length !== (untracked ? 1 : 8) || at >= r.length) continue;
      const name = r.subarray(at);
      // A deletion (Y is "D": gone, or behind a link now) has nothing to size, and lstat would
      // follow that link.
      if (!untracked && fields[1]![1] === 0x44) continue;
      // A tracked file the agent made a repository of (its worktree mode a gitlink's, its
      // index mode not): a nested repository, "dir/", as one not tracked is listed.
      if (!untracked && isGitlink(fields[5]!) && !isGitlink(fields[4]!))
        names.push(Buffer.concat([name, SLASH]));
      else names.push(name);
    }
    yield names;
  }
}

const SLASH = Buffer.from("/");
const isGitlink = (mode: Buffer) => mode.toString("latin1") === "160000";

/** The sizes of a change's files as they are listed, and which are left out for them. */
class ChangeSizes {
  private readonly b: CommitBounds;
  /** Files over maxFileBytes. */
  private readonly over: Sized[] = [];
  /**
   * Files that could be left out for the total: only one of at least maxChangeBytes /
   * MAX_LEFT_OUT can help; the largest MAX_LEFT_OUT are kept (sorted now and then).
   */
  private big: Sized[] = [];
  private readonly floor: number;
  private total = 0;
  private files = 0;

  constructor(b: CommitBounds) {
    this.b = b;
    this.floor = b.maxChangeBytes / MAX_LEFT_OUT;
  }

  /** A file of `size` bytes; `file` false for a link (it counts towards the total only). */
  add(name: Buffer, size: number, file = true): void {
    this.files++;
    if (file && size > this.b.maxFileBytes) {
      if (this.over.length >= MAX_LEFT_OUT)
        throw tooBig(this.b, this.files, this.total + size, this.over.length);
      this.over.push({ name, size });
      return;
    }
    this.total += size;
    if (file && size >= this.floor) this.big.push({ name, size });
    if (this.big.length >= 4 * MAX_LEFT_OUT)
      this.big = this.big.sort((x, y) => y.size - x.size).slice(0, MAX_LEFT_OUT);
  }

  /**
   * Those over maxFileBytes, then the largest until the rest is within maxChangeBytes; each of
   * the two the largest first.
   */
  leftOut(): Sized[] {
    const left = [...this.over].sort((x, y) => y.size - x.size);
    let total = this.total;
    for (const f of this.big.sort((x, y) => y.size - x.size)) {
      if (total <= this.b.maxChangeBytes || left.length >= MAX_LEFT_OUT) break;
      left.push(f);
      total -= f.size;
    }
    if (total > this.b.maxChangeBytes) throw tooBig(this.b, this.files, total, left.length);
    return left;
  }
}

/** ChangeTooBig for a change that needs more than MAX_LEFT_OUT files left out, saying why. */
function tooBig(b: CommitBounds, files: number, bytes: number, leftOut: number): ChangeTooBig {
  const why =
    bytes > b.maxChangeBytes
      ? `with the ${leftOut} largest of its new and changed files left out (the most that may be), the rest of the ${files} looked at take ${bytes} bytes, over agent.max_change_bytes (${b.maxChangeBytes})`
      : `more than ${MAX_LEFT_OUT} of its files (of the ${files} looked at) are over agent.max_commit_file_bytes (${b.maxFileBytes}), and at most ${MAX_LEFT_OUT} are left out`;
  return new ChangeTooBig(why);
}

/**
 * Checks what `git add` stored beyond the start commit (the blobs of new and changed files), as
 * git stores it: a file git re-encodes on its way in (a `working-tree-encoding` attribute: 3 bytes
 * a byte for CP437, up to 12 for TSCII) can be larger there than in the worktree, where
 * leftOutForSize measured it. Throws ChangeTooBig when one file's blob is over maxFileBytes or
 * all (links' too) are over maxChangeBytes.
 */
async function checkStored(git: Git, p: Prepared, b: CommitBounds): Promise<void> {
  const blobs: string[] = [];
  const links = new Set<number>();
  const listing = git.stream(
    ["diff-index", "--cached", "--raw", "-z", "--no-renames", "--no-abbrev", p.startCommit],
    onWorktree(p),
  );
  // Each ":<mode> <mode> <id> <id> <status>", then its path (read as such, whatever it says):
  // the blobs of regular files and links.
  let isPath = false;
  for await (const fields of namesIn(listing))
    for (const f of fields) {
      const raw = isPath ? "" : f.toString("latin1");
      // A new gitlink: a nested repository moved aside failed to be (none should reach here).
      if (/^:\d{6} 160000 \w+ \w+ [AT]$/.test(raw))
        throw new ChangeTooBig(
          "a repository nested in it would go in as a gitlink to a commit nobody has",
        );
      const m = /^:\d{6} (100644|100755|120000) \w+ (\w+) [AMT]$/.exec(raw);
      if (m?.[1] === "120000") links.add(blobs.length);
      if (m) blobs.push(m[2]!);
      isPath = !isPath;
    }
  if (blobs.length === 0) return;
  const out = await git.text(["cat-file", "--batch-check=%(objectsize)"], {
    ...onWorktree(p),
    input: blobs.join("\n") + "\n",
  });
  let total = 0;
  let largest = 0;
  for (const [i, line] of out.split("\n").entries()) {
    const size = /^\d+$/.test(line) ? Number(line) : 0;
    total += size;
    if (!links.has(i)) largest = Math.max(largest, size);
  }
  if (largest <= b.maxFileBytes && total <= b.maxChangeBytes) return;
  const why =
    largest > b.maxFileBytes
      ? `one file takes ${largest} bytes, over agent.max_commit_file_bytes (${b.maxFileBytes})`
      : `its ${blobs.length} new and changed files and links take ${total} bytes, over agent.max_change_bytes (${b.maxChangeBytes})`;
  throw new ChangeTooBig(
    `as git stores it (re-encoded, as a working-tree-encoding attribute asks), ${why}`,
  );
}

/** What is left out (files, nested repositories) first, then what git could not add; undefined when neither. */
function withLeftOut(
  leftOut: Buffer[],
  notAdded: NotCommitted | undefined,
): NotCommitted | undefined {
  if (leftOut.length === 0) return notAdded;
  const paths = leftOut.map((name) => cut(name.toString("utf8")));
  return {
    paths: [...paths, ...(notAdded?.paths ?? [])].slice(0, MAX_NOT_COMMITTED),
    total: leftOut.length + (notAdded?.total ?? 0),
  };
}

/**
 * The NUL-ended names of a listing (`git ls-files -z`), a batch per chunk as it comes, as bytes;
 * a name cut by a chunk's end comes whole in the next batch (git's are < PATH_MAX).
 */
async function* namesIn(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer[]> {
  let rest = Buffer.alloc(0);
  for await (const chunk of chunks) {
    const b = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
    const names: Buffer[] = [];
    let at = 0;
    for (let end = b.indexOf(0, at); end >= 0; at = end + 1, end = b.indexOf(0, at))
      if (end > at) names.push(Buffer.from(b.subarray(at, end)));
    rest = Buffer.from(b.subarray(at));
    yield names;
  }
}

/** Most paths a change names as not committed, and most bytes of each. */
export const MAX_NOT_COMMITTED = 20;
const MAX_NOT_COMMITTED_BYTES = 1024;
/** Most paths git's messages name that are looked at (the first ones). */
const MAX_REPORTED = 100;

/**
 * The paths `git add --all --ignore-errors` said it could not add (its stderr, the last 64 KiB
 * of it), the first MAX_REPORTED: a folder it could not open (past PATH_MAX, say: git exits 0
 * then), a file it could not index (unreadable), a nested repository with no commit. Git prints
 * names raw, newlines and all, so a file can be named like such a message: what this finds is
 * only reported, and confirmed() decides.
 */
export function notCommittedIn(stderr: string): string[] {
  const found = new Set<string>(); // git names a folder it could not open twice
  for (const line of stderr.split("\n")) {
    const m =
      // Past PATH_MAX, git's message is cut at PATH_MAX too: no closing quote, no reason.
      /^warning: could not open directory '(.*?)(?:': [^']*)?$/.exec(line) ??
      /^error: unable to index file '(.*)'$/.exec(line) ??
      // a path git will not take: `.GIT/x` (any case of .git, as its own folder)
      /^error: unable to add '(.*)' to index$/.exec(line) ??
      /^error: '(.*)' does not have a commit checked out$/.exec(line);
    if (m && found.size < MAX_REPORTED) found.add(m[1]!);
  }
  return [...found];
}

/**
 * Of the paths git reported, those it did skip. A message a file's name forges is inside that
 * one name: its path holds no "/" (git's own for a folder end in one, and nested paths hold
 * one). So a path with no "/" counts only if it is in the worktree and not in the index after
 * `git add` (a forged one names a file that was added, or none). The first MAX_NOT_COMMITTED,
 * each cut to MAX_NOT_COMMITTED_BYTES, and how many; undefined when none.
 */
async function confirmed(
  git: Git,
  p: Prepared,
  reported: string[],
): Promise<NotCommitted | undefined> {
  const bare: string[] = [];
  for (const r of reported.filter((r) => !r.includes("/") && r !== "." && r !== "..")) {
    // (git names a folder it skipped with its "/": a bare folder name is a forgery)
    const st = await lstat(path.join(p.worktree, r)).catch(() => undefined);
    if (st && !st.isDirectory()) bare.push(r);
  }
  const added = new Set<string>();
  if (bare.length > 0) {
    const out = await git.run(
      ["ls-files", "-z", "--", ...bare.map((b) => `:(literal)${b}`)],
      onWorktree(p),
    );
    for (const name of out.stdout.toString("utf8").split("\0")) added.add(name);
  }
  const paths = reported.filter((r) => r.includes("/") || (bare.includes(r) && !added.has(r)));
  if (paths.length === 0) return undefined;
  return { paths: paths.slice(0, MAX_NOT_COMMITTED).map(cut), total: paths.length };
}

/** A path named as not committed: at most MAX_NOT_COMMITTED_BYTES of it. */
function cut(s: string): string {
  return Buffer.byteLength(s) <= MAX_NOT_COMMITTED_BYTES
    ? s
    : `${utf8Prefix(s, MAX_NOT_COMMITTED_BYTES)}…`;
}

/**
 * What a nested repository's `.git` is named while it is moved aside, beside the worktree (a
 * number after it). One a crash left there goes with the record (lifecycle.ts discard).
 */
export const NESTED_ASIDE = ".nested-git-";

/** Most nested repositories (and levels of them) whose files are committed. */
const MAX_NESTED = 1000;
const MAX_NESTED_DEPTH = 8;

/**
 * Moves the `.git` of each repository of `nested` (git lists one as an untracked `dir/`) out of
 * the worktree, beside it in the worktree's parent (ours, on the same file system), each pushed
 * onto `moved` as [where it was, where it is]. Nothing of the
 * agent runs meanwhile. Names are handled as bytes.
 */
async function hideNested(
  p: Prepared,
  nested: Buffer[],
  moved: Array<[Buffer, Buffer]>,
): Promise<void> {
  const parent = path.dirname(p.worktree);
  for (const dir of nested) {
    const at = Buffer.concat([Buffer.from(`${p.worktree}/`), dir, Buffer.from(".git")]);
    const aside = path.join(parent, `${NESTED_ASIDE}${moved.length}`);
    const to = Buffer.from(aside);
    if (!(await lstat(at).catch(() => undefined))) continue;
    await removeTree(aside);
    await rename(at, to);
    moved.push([at, to]);
  }
}

async function mustBeFolder(dir: string): Promise<void> {
  const st = await lstat(dir).catch(() => undefined);
  if (!st?.isDirectory())
    throw notReady(
      `the worktree ${quote(dir)} is ${st ? "no longer a folder (it was replaced, e.g. by a link)" : "gone"}: nothing of it can be committed`,
      true,
    );
}

/** The worktree exists as a real folder. */
export async function isFolder(dir: string): Promise<boolean> {
  return (await lstat(dir).catch(() => undefined))?.isDirectory() === true;
}

/**
 * Removes the worktree (a link in its place is removed, not followed; nothing inside is
 * followed either: removeTree) and its admin dir: `git worktree prune` of this one worktree alone.
 */
export async function removeWorktree(
  p: Pick<Prepared, "worktree" | "adminDir" | "cache">,
): Promise<void> {
  await removeTree(p.worktree);
  if (p.adminDir !== "" && (await isAdminDirOf(p.cache, p.adminDir))) await removeTree(p.adminDir);
}

/** `admin` is a folder directly in `<cache>/worktrees/` (compared by real paths). */
async function isAdminDirOf(cache: string, admin: string): Promise<boolean> {
  try {
    const home = path.join(await realpath(cache), "worktrees");
    return path.dirname(await realpath(admin)) === home;
  } catch {
    return false;
  }
}
