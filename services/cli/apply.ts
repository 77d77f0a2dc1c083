import { createWriteStream, existsSync } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { shortCommit } from "./change-text.ts";
import { changeOf, type PatchSource } from "./diff.ts";
import { count } from "./format.ts";
import { git, gitOut } from "./git.ts";

/** `conductor apply` refused, or its `git am` failed; the message says what to do. */
export class ApplyError extends Error {
  override name = "ApplyError";
}

/** The repository `apply` works in, once it is found ready for `git am`. */
interface Repository {
  /** Where git keeps an am or rebase in progress. */
  amDir: string;
  head: string;
  /** The current branch, or "detached HEAD". */
  branch: string;
}

/**
 * `conductor apply ID`: applies the commits of task `id`'s change to the git repository of
 * `io.cwd` with `git am` (`--3way` with `threeWay`), from the patch streamed to a temporary
 * file. Refuses, before fetching anything, a folder that is not in a repository, has
 * uncommitted changes to tracked files, or has an am or rebase in progress. When `git am`
 * fails it runs `git am --abort`, so the repository is as it was, and throws an ApplyError.
 */
export async function apply(
  client: PatchSource,
  id: string,
  how: { threeWay: boolean; json: boolean },
  io: { out: (line: string) => void; cwd: string },
): Promise<number> {
  const repo = await readyRepository(io.cwd, id);
  const change = await changeOf(client, id);
  const applied: Applied = {
    task: id,
    branch: repo.branch,
    from: repo.head,
    to: repo.head,
    commits: 0,
    files: 0,
    insertions: 0,
    deletions: 0,
  };
  if (change.headCommit === change.baseCommit) {
    io.out(
      how.json
        ? JSON.stringify(applied)
        : `task ${id} changed nothing (its branch is its base, ${shortCommit(change.baseCommit)}): nothing to apply`,
    );
    return 0;
  }
  const dir = await mkdtemp(path.join(tmpdir(), "conductor-apply-"));
  try {
    const file = path.join(dir, `${id.replace(/[^\w.-]/g, "_")}.patch`);
    const chunks = async function* () {
      for await (const { chunk } of client.getTaskPatch({ taskId: id })) yield chunk;
    };
    await pipeline(Readable.from(chunks()), createWriteStream(file));
    if ((await stat(file)).size === 0)
      throw new ApplyError(`the patch of task ${id} came empty, though its change has commits`);
    const am = await git(io.cwd, ["am", ...(how.threeWay ? ["--3way"] : []), file]);
    if (am.code !== 0) throw await undo(io.cwd, repo, id, change.baseCommit, am, how.threeWay);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const to = await gitOut(io.cwd, ["rev-parse", "HEAD"]);
  const shortstat = await gitOut(io.cwd, ["diff", "--shortstat", repo.head, to]);
  const n = (what: RegExp) => Number(what.exec(shortstat)?.[1] ?? 0);
  Object.assign(applied, {
    to,
    commits: Number(await gitOut(io.cwd, ["rev-list", "--count", `${repo.head}..${to}`])),
    files: n(/(\d+) files? changed/),
    insertions: n(/(\d+) insertions?/),
    deletions: n(/(\d+) deletions?/),
  });
  io.out(how.json ? JSON.stringify(applied) : appliedText(applied));
  return 0;
}

/** What `apply` did; `--json` prints it as it is. */
export interface Applied {
  task: string;
  /** The branch the commits went on ("detached HEAD" when none). */
  branch: string;
  /** HEAD before and after. */
  from: string;
  to: string;
  commits: number;
  files: number;
  insertions: number;
  deletions: number;
}

/** "applied 2 commits of task t-1 onto main (1a2b3c4..5d6e7f8): 3 files changed, +10 −6". */
export function appliedText(a: Applied): string {
  const s = (n: number) => (n === 1 ? "" : "s");
  return (
    `applied ${a.commits} commit${s(a.commits)} of task ${a.task} onto ${a.branch} ` +
    `(${shortCommit(a.from)}..${shortCommit(a.to)}): ${count(a.files)} file${s(a.files)} changed, ` +
    `+${count(a.insertions)} −${count(a.deletions)}`
  );
}

/** The repository of `cwd`, or an ApplyError when `git am` should not run there. */
async function readyRepository(cwd: string, id: string): Promise<Repository> {
  const inside = await git(cwd, ["rev-parse", "--is-inside-work-tree"]);
  if (inside.code !== 0 || inside.stdout.trim() !== "true")
    throw new ApplyError(
      `${cwd} is not in a git repository: run "conductor apply ${id}" in the repository to ` +
        `apply the task's commits to, or save its patch with "conductor diff ${id} > task.patch"`,
    );
  const [amDir, mergeDir] = (
    await gitOut(cwd, ["rev-parse", "--git-path", "rebase-apply", "--git-path", "rebase-merge"])
  )
    .split("\n")
    .map((p) => path.resolve(cwd, p));
  if (existsSync(path.join(amDir!, "applying")))
    throw new ApplyError(
      'a "git am" is in progress in this repository: finish it with "git am --continue" or ' +
        'drop it with "git am --abort", then run conductor apply again',
    );
  if (existsSync(amDir!) || existsSync(mergeDir!))
    throw new ApplyError(
      'a "git rebase" is in progress in this repository: finish it with "git rebase --continue" ' +
        'or drop it with "git rebase --abort", then run conductor apply again',
    );
  const head = await git(cwd, ["rev-parse", "--verify", "-q", "HEAD^{commit}"]);
  if (head.code !== 0)
    throw new ApplyError(
      "this repository has no commit yet: the task's commits go on top of the current " +
        "branch, so commit (or check out) the task's base first",
    );
  // Not trimmed: each line starts with two status columns, the first often a space.
  const status = await git(cwd, ["status", "--porcelain", "--untracked-files=no"]);
  if (status.code !== 0) throw new ApplyError(`git status failed: ${status.stderr.trim()}`);
  const dirty = status.stdout.split("\n").filter(Boolean);
  if (dirty.length > 0) {
    const some = dirty.slice(0, 5).map((l) => l.slice(3));
    const more = dirty.length > 5 ? `, and ${dirty.length - 5} more` : "";
    throw new ApplyError(
      `this repository has uncommitted changes to tracked files (${some.join(", ")}${more}): ` +
        'commit them, or put them aside with "git stash", then run conductor apply again',
    );
  }
  const branch = await git(cwd, ["symbolic-ref", "--short", "-q", "HEAD"]);
  return {
    amDir: amDir!,
    head: head.stdout.trim(),
    branch: branch.code === 0 ? branch.stdout.trim() : "detached HEAD",
  };
}

/**
 * After a failed `git am`: aborts it (when it left one in progress), and returns the error
 * that says what failed, that the repository is as it was, and what may help.
 */
async function undo(
  cwd: string,
  repo: Repository,
  id: string,
  base: string,
  am: { stdout: string; stderr: string },
  threeWay: boolean,
): Promise<ApplyError> {
  // git's own advice (--continue, --skip, --abort) is for an am left in progress: not so here.
  const said = `${am.stdout}\n${am.stderr}`
    .split("\n")
    .map((l) => l.trimEnd())
    .filter((l) => l && !/^hint:|git am --|--show-current-patch/.test(l))
    .map((l) => `  ${l}`);
  let after = "the repository is as it was";
  if (existsSync(repo.amDir)) {
    const abort = await git(cwd, ["am", "--abort"]);
    after =
      abort.code === 0
        ? 'ran "git am --abort": the repository is as it was'
        : `"git am --abort" failed too (${abort.stderr.trim()}): run it yourself`;
  }
  const hints: string[] = [];
  const hasBase = (await git(cwd, ["cat-file", "-e", `${base}^{commit}`])).code === 0;
  if (!threeWay)
    hints.push(
      `"conductor apply ${id} --3way" merges where the files differ from the task's base` +
        (hasBase ? "" : " (it needs the base commit's files in this repository)"),
    );
  if (!hasBase)
    hints.push(
      `this repository does not have the task's base commit ${shortCommit(base)}: the task ` +
        `started from another history; fetch it from the task's repository first`,
    );
  return new ApplyError(
    [
      `git am could not apply the commits of task ${id} onto ${repo.branch} (${shortCommit(repo.head)}); ${after}.`,
      ...said,
      ...hints.map((h) => `hint: ${h}`),
    ].join("\n"),
  );
}
