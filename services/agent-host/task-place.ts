import { execFile } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmdirSync,
  statSync,
} from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  FileChangeSchema,
  FileStatus,
  WorkspaceChangeSchema,
  type TaskSpec,
  type Workspace,
  type WorkspaceChange,
} from "../../gen/conductor/v1/task_pb.js";
import type { Mount } from "../../plugins/runtime.ts";
import type { AgentOwner } from "../shared/agent-files.ts";
import { DomainError } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { quote } from "../shared/quote.ts";
import { worktreesDir } from "./provision.ts";
import {
  discoveryEnv,
  setAside,
  unsavedDir,
  WorkspaceError,
  type Change,
  type Prepared,
  type Workspaces,
} from "./workspace/index.ts";

const run = promisify(execFile);

/** Files of a change listed in a result; the rest are counted (WorkspaceChange.files_total). */
export const MAX_RESULT_FILES = 1000;
/**
 * Bytes of paths (path and old path) the files listed in a result may hold together: paths of
 * 4 KiB each (PATH_MAX) would make 1,000 of them 8 MiB, past a gRPC client's 4 MiB message.
 */
export const MAX_RESULT_FILE_BYTES = 256 * 1024;

/** What opening a task's workspace takes from its AgentHost. */
export interface PlaceContext {
  dataDir: string;
  /** Conductor's own folders (data, sockets): no workspace may be in one or hold one. */
  protectedPaths: readonly string[];
  workspaces: Workspaces;
  /** Host folders a host_path workspace may be under (agent.allowed_host_paths), absolute. */
  allowedHostPaths: readonly string[];
  /** Whether an exec can bind folders of its own (capabilities.execMounts). */
  execMounts: boolean;
  log: Logger;
}

/** Where one attempt works: its folder, the folders its execs bind, and how it is closed. */
export interface TaskPlace {
  cwd: string;
  mounts: Mount[];
  /** The git workspace's attempt, when the task has one. */
  prepared?: Prepared;
  /** The folder of ours holding the worktree, removed with it. */
  parent?: string;
}

/** A workspace that cannot be used here; `permanent` when no retry can help. */
export class PlaceError extends DomainError {
  readonly permanent: boolean;
  constructor(message: string, code: Code, permanent: boolean, cause?: unknown) {
    super(message, code, { cause });
    this.permanent = permanent;
  }
}

/**
 * The folder of an agent that holds the worktree of its current task, bound into its
 * sandbox at creation where execs cannot bind folders of their own (containers).
 */
export function taskDirOf(agentDir: string): string {
  return path.join(agentDir, "task");
}

/** The worktree's name: the repository's, from its path or URL ("~/src/app.git" → "app"). */
export function repoName(repository: string): string {
  const last =
    repository
      .replace(/[/\\]+$/, "")
      .split(/[/:\\]/)
      .pop() ?? "";
  const name = last
    .replace(/\.git$/, "")
    .replace(/[^A-Za-z0-9._-]/g, "-")
    .replace(/^[.-]+/, "");
  return name.slice(0, 64) || "repository";
}

/**
 * Checks a host folder against the allowed ones: it must exist, be a folder, and its real
 * path lie in (or be) one of `allowed`'s real paths. Returns the real path.
 */
export function allowedHostPath(
  p: string,
  allowed: readonly string[],
  protectedPaths: readonly string[] = [],
): string {
  if (!path.isAbsolute(p)) {
    throw new PlaceError(`host path ${quote(p)} is not absolute`, Code.InvalidArgument, true);
  }
  if (allowed.length === 0) {
    throw new PlaceError(
      `host path ${quote(p)} is not allowed: this node allows no host folders (set agent.allowed_host_paths in its config)`,
      Code.FailedPrecondition,
      true,
    );
  }
  let real: string;
  try {
    real = realpathSync(p);
    if (!statSync(real).isDirectory()) throw new Error("not a folder");
  } catch {
    throw new PlaceError(
      `host path ${quote(p)} does not exist or is not a folder on this node`,
      Code.FailedPrecondition,
      true,
    );
  }
  ownFolders(p, real, protectedPaths, "host path");
  const roots = allowed.filter((a) => existsSync(a)).map((a) => realpathSync(a));
  if (!roots.some((r) => real === r || real.startsWith(`${r}/`))) {
    throw new PlaceError(
      `host path ${quote(p)} is not under agent.allowed_host_paths (${allowed.join(", ")}) on this node`,
      Code.FailedPrecondition,
      true,
    );
  }
  return real;
}

/** Checks a workspace can be used on this node; for a git one returns the commit its ref names now. */
export async function checkWorkspace(
  c: PlaceContext,
  ws: Workspace | undefined,
  signal?: AbortSignal,
): Promise<string> {
  switch (ws?.kind.case) {
    case "git": {
      const g = ws.kind.value;
      await localRepository(g.repository, c.protectedPaths);
      const { commit } = await c.workspaces.check(
        { repository: g.repository, ref: g.ref, branch: g.branch },
        signal,
      );
      return commit;
    }
    case "hostPath":
      allowedHostPath(ws.kind.value.path, c.allowedHostPaths, c.protectedPaths);
      if (!c.execMounts) throw containersCannotMount();
      return "";
    default:
      return "";
  }
}

/**
 * Refuses a folder that is one of Conductor's own (its data: the clones holding every task's
 * results, the stores, the Broker's secret; its sockets) or holds one: no task may work there.
 */
function ownFolders(given: string, real: string, protectedPaths: readonly string[], what: string) {
  // A repository is only read (fetched): one holding Conductor's folders is fine (a
  // `conductor up` run in it). A host folder is bound into the sandbox, with all it holds.
  const holdsToo = what === "host path";
  for (const p of protectedPaths) {
    const mine = existsSync(p) ? realpathSync(p) : path.resolve(p);
    const holds = holdsToo && mine.startsWith(`${real}/`);
    if (real === mine || real.startsWith(`${mine}/`) || holds) {
      throw new PlaceError(
        `${what} ${quote(given)} is or holds Conductor's own folder ${mine}; no task may work there`,
        Code.InvalidArgument,
        true,
      );
    }
  }
}

/**
 * A repository given as a local path (or file:// URL) must not be in Conductor's folders —
 * neither itself nor the git folders it uses: its `.git` (a link or a `gitdir:` file), their
 * common folder, and the object stores it borrows from (objects/info/alternates), as git
 * itself resolves them. What git cannot read there is left for the workspace's own check.
 */
export async function localRepository(repository: string, protectedPaths: readonly string[]) {
  let local: string | undefined;
  if (repository.startsWith("/")) local = repository;
  else if (repository.startsWith("file://")) {
    try {
      local = decodeURIComponent(new URL(repository).pathname);
    } catch {
      return; // not a URL: the workspace module says so
    }
  }
  if (!local) return;
  const real = existsSync(local) ? realpathSync(local) : path.resolve(local);
  ownFolders(repository, real, protectedPaths, "repository");
  for (const dir of await gitFoldersOf(real))
    ownFolders(repository, dir, protectedPaths, "repository");
}

/** The real paths of the git folders a repository at `dir` uses; [] when git finds none. */
async function gitFoldersOf(dir: string): Promise<string[]> {
  let out: string;
  try {
    ({ stdout: out } = await run(
      "git",
      ["rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir"],
      {
        cwd: dir,
        timeout: 10_000,
        env: discoveryEnv(path.dirname(dir)),
      },
    ));
  } catch {
    return [];
  }
  const dirs = out.split("\n").filter(Boolean);
  for (const gitDir of [...dirs]) {
    const alternates = path.join(gitDir, "objects", "info", "alternates");
    if (!existsSync(alternates)) continue;
    for (const line of readFileSync(alternates, "utf8").split("\n")) {
      const alt = line.trim();
      if (alt && !alt.startsWith("#")) dirs.push(path.resolve(path.join(gitDir, "objects"), alt));
    }
  }
  return dirs.map((d) => (existsSync(d) ? realpathSync(d) : path.resolve(d)));
}

function containersCannotMount(): PlaceError {
  return new PlaceError(
    "host_path workspaces need a runtime that binds a folder per run (the process runtime); this node's runtime starts its agents' containers ahead of their tasks",
    Code.FailedPrecondition,
    true,
  );
}

/**
 * Opens the workspace of one attempt on an agent: a git worktree made in the agent's task
 * folder (bound into its sandbox), a host folder, or the agent's own scratch folder.
 */
export async function openPlace(
  c: PlaceContext,
  a: { agentId: string; agentDir: string; scratch: string; owner: AgentOwner | undefined },
  taskId: string,
  attempt: number,
  spec: TaskSpec,
  signal: AbortSignal,
): Promise<TaskPlace> {
  const ws = spec.workspace;
  switch (ws?.kind.case) {
    case "git": {
      const g = ws.kind.value;
      await localRepository(g.repository, c.protectedPaths);
      // Inside, the same path on every agent; outside, in the agent's task folder where the
      // sandbox sees that folder (containers), else bound at that very path for each exec.
      const inside = path.join(worktreesDir(c.dataDir), taskId);
      const parent = c.execMounts ? inside : path.join(taskDirOf(a.agentDir), taskId);
      await clearTaskDir(c, a.agentDir, taskId);
      mkdirSync(parent, { recursive: true, mode: 0o755 });
      chmodSync(parent, 0o755); // the agent's user walks through it to its worktree
      const name = repoName(g.repository);
      const prepared = await c.workspaces.prepare(
        {
          taskId,
          attempt,
          agentId: a.agentId,
          repository: g.repository,
          ref: g.ref,
          branch: g.branch,
          push: g.push,
        },
        path.join(parent, name),
        a.owner,
        signal,
      );
      const cwd = path.join(inside, name);
      return { cwd, mounts: c.execMounts ? [{ hostPath: cwd }] : [], prepared, parent };
    }
    case "hostPath": {
      const real = allowedHostPath(ws.kind.value.path, c.allowedHostPaths, c.protectedPaths);
      if (!c.execMounts) throw containersCannotMount();
      return { cwd: real, mounts: [{ hostPath: real, readOnly: ws.kind.value.readOnly }] };
    }
    default:
      return { cwd: a.scratch, mounts: [] };
  }
}

/**
 * Makes sure a container agent's task folder holds nothing of another task (its sandbox sees
 * the whole folder): a worktree whose work could not be saved before is saved now. One that
 * never can be (what its agent left there fails `git add` every time: a .gitattributes
 * encoding its bytes do not decode from, say) is moved out of every sandbox's sight by
 * Workspaces.recover, to `<data>/unsaved/<task id>-<ms>/`, kept whole for whoever looks; one
 * still left (its record lost, or saving it failed otherwise) is moved there too, and the agent
 * goes on: one task cannot take its agent from every later one. Where it cannot be moved, this
 * run fails.
 */
async function clearTaskDir(c: PlaceContext, agentDir: string, taskId: string): Promise<void> {
  if (c.execMounts) return;
  const dir = taskDirOf(agentDir);
  const others = () => readdirSync(dir).filter((name) => name !== taskId);
  if (others().length === 0) return;
  // Only the tasks whose worktrees are here: other agents' attempts may be running now.
  await c.workspaces.recover(others());
  for (const name of others()) rmEmpty(path.join(dir, name));
  const left = others();
  if (left.length === 0) return;
  try {
    for (const name of left) {
      const from = path.join(dir, name);
      const worktrees = readdirSync(from).map((w) => path.join(from, w));
      const to = await setAside(unsavedDir(c.dataDir), from, name, worktrees);
      c.log.error(
        "the work of a task could be saved neither when its attempt ended nor since: its worktree was moved out of its agent's sight, and is kept there",
        { task_id: name, kept_at: to },
      );
    }
  } catch (e) {
    throw new PlaceError(
      `the agent's task folder still holds the worktree of task ${left[0]}, whose work could not be saved, nor the worktree be moved aside (${(e as Error).message}); another agent or a later attempt will take this task`,
      Code.Unavailable,
      false,
      e,
    );
  }
  await c.workspaces.recover(left); // their records: the worktrees gone, only git's leftovers go
}

/** Removes the empty folders in `dir` (task folders whose worktree is gone). */
export function sweepEmpty(dir: string): void {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) rmEmpty(path.join(dir, name));
}

/** Removes a folder if it is empty (or gone); anything else stays. */
export function rmEmpty(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // not empty, or gone
  }
}

/** Whether an error opening a workspace can pass on another attempt. */
export function placeErrorPermanent(e: unknown): boolean {
  if (e instanceof PlaceError || e instanceof WorkspaceError) return e.permanent;
  return false;
}

const STATUS: Record<string, FileStatus> = {
  added: FileStatus.ADDED,
  modified: FileStatus.MODIFIED,
  deleted: FileStatus.DELETED,
  renamed: FileStatus.RENAMED,
  type_changed: FileStatus.TYPE_CHANGED,
};

/**
 * A change as TaskResult.change holds it: at most MAX_RESULT_FILES files listed, and only so
 * many as hold MAX_RESULT_FILE_BYTES of paths (the first file always).
 */
export function changeProto(repository: string, ch: Change, partial: boolean): WorkspaceChange {
  return create(WorkspaceChangeSchema, {
    repository,
    baseCommit: ch.baseCommit,
    headCommit: ch.headCommit,
    branch: ch.branch,
    files: listed(ch.files).map((f) =>
      create(FileChangeSchema, {
        path: f.path,
        oldPath: f.oldPath,
        status: STATUS[f.status] ?? FileStatus.UNSPECIFIED,
        additions: BigInt(f.additions),
        deletions: BigInt(f.deletions),
        binary: f.binary,
      }),
    ),
    filesTotal: Math.max(ch.filesTotal ?? 0, ch.files.length),
    committed: ch.committed,
    pushed: ch.pushed,
    partial,
    notCommitted: ch.notCommitted?.paths ?? [],
    notCommittedTotal: ch.notCommitted?.total ?? 0,
  });
}

/** The first files of a change within MAX_RESULT_FILES and MAX_RESULT_FILE_BYTES. */
function listed(files: Change["files"]): Change["files"] {
  let bytes = 0;
  let n = 0;
  for (const f of files.slice(0, MAX_RESULT_FILES)) {
    bytes += Buffer.byteLength(f.path) + Buffer.byteLength(f.oldPath);
    if (n > 0 && bytes > MAX_RESULT_FILE_BYTES) break;
    n++;
  }
  return files.slice(0, n);
}
