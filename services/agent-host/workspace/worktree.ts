import { lchown, lstat, readdir, readFile, realpath, rename } from "node:fs/promises";
import path from "node:path";
import { Code } from "@connectrpc/connect";
import { removeTree, type AgentOwner } from "../../shared/agent-files.ts";
import type { Logger } from "../../shared/log.ts";
import { utf8Prefix } from "../../shared/output-bounds.ts";
import { quote } from "../../shared/quote.ts";
import type { Cache } from "./cache.ts";
import { notReady, WorkspaceError } from "./errors.ts";
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
  log: Logger,
): Promise<{ tree: string; notCommitted: NotCommitted | undefined }> {
  await mustBeFolder(p.worktree);
  // A repository the agent made inside (git init, git clone, a scaffolder) would go in as a
  // gitlink to a commit nobody has: its files are committed instead, its .git kept out.
  const hidden = await hideNestedRepositories(git, p);
  let r: Awaited<ReturnType<Git["run"]>>;
  try {
    // --ignore-errors: a path git cannot add (an unreadable file, an empty nested repository)
    // is reported and skipped instead of losing everything else.
    r = await git.run(["add", "--all", "--ignore-errors"], { ...onWorktree(p), ok: [0, 1] });
  } finally {
    for (const [at, to] of hidden.reverse()) await rename(to, at).catch(() => undefined);
  }
  const notCommitted = await confirmed(git, p, notCommittedIn(r.stderr));
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
  const cut = (s: string) =>
    Buffer.byteLength(s) <= MAX_NOT_COMMITTED_BYTES
      ? s
      : `${utf8Prefix(s, MAX_NOT_COMMITTED_BYTES)}…`;
  return { paths: paths.slice(0, MAX_NOT_COMMITTED).map(cut), total: paths.length };
}

/** Most nested repositories (and levels of them) whose files are committed. */
const MAX_NESTED = 1000;
const MAX_NESTED_DEPTH = 8;

/**
 * Moves the `.git` of every repository nested in the worktree (git lists one as an untracked
 * `dir/`) out of it, beside it in the worktree's parent (ours, on the same file system), so
 * `git add` takes its files; returns [where it was, where it is] to move them back. Nothing of
 * the agent runs meanwhile. Names are handled as bytes.
 */
async function hideNestedRepositories(git: Git, p: Prepared): Promise<Array<[Buffer, Buffer]>> {
  const moved: Array<[Buffer, Buffer]> = [];
  const parent = path.dirname(p.worktree);
  for (let depth = 0; depth < MAX_NESTED_DEPTH && moved.length < MAX_NESTED; depth++) {
    const nested = await nestedIn(git, p);
    if (nested.length === 0) break;
    for (const dir of nested.slice(0, MAX_NESTED - moved.length)) {
      const at = Buffer.concat([Buffer.from(`${p.worktree}/`), dir, Buffer.from(".git")]);
      const aside = path.join(parent, `.nested-git-${moved.length}`);
      const to = Buffer.from(aside);
      if (!(await lstat(at).catch(() => undefined))) continue;
      await removeTree(aside);
      await rename(at, to);
      moved.push([at, to]);
    }
  }
  return moved;
}

/**
 * The repositories git finds in the worktree (`ls-files --others` names each as `dir/`), at most
 * MAX_NESTED, as bytes. The listing names every untracked file too (hundreds of MB of paths, for
 * an agent that makes them): it is read as it comes, and only the nested ones kept.
 */
async function nestedIn(git: Git, p: Prepared): Promise<Buffer[]> {
  const nested: Buffer[] = [];
  let rest = Buffer.alloc(0);
  for await (const chunk of git.stream(
    ["ls-files", "--others", "--exclude-standard", "-z"],
    onWorktree(p),
  )) {
    const b = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
    let at = 0;
    for (let end = b.indexOf(0, at); end >= 0; at = end + 1, end = b.indexOf(0, at)) {
      if (end > at && b[end - 1] === 0x2f && nested.length < MAX_NESTED)
        nested.push(Buffer.from(b.subarray(at, end))); // "dir/"
    }
    rest = Buffer.from(b.subarray(at)); // a name cut by the chunk's end (git's are < PATH_MAX)
  }
  return nested;
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
