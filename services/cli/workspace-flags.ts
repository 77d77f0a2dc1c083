import path from "node:path";
import { create } from "@bufbuild/protobuf";
import {
  CheckSchema,
  GitWorkspaceSchema,
  HostPathWorkspaceSchema,
  WorkspaceSchema,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { bool, list, str, UsageError, type ParsedCommand } from "./args.ts";
import { oneLine } from "./format.ts";

/** Where relative paths and `~` of the command line point. */
export interface PathBase {
  /** The folder relative paths are relative to. */
  cwd: string;
  /** What `~` stands for. */
  home: string;
}

/** A local path made absolute: `~` and `~/…` under `home`, a relative one under `cwd`. */
export function localPath(value: string, base: PathBase): string {
  if (value === "~") return base.home;
  if (value.startsWith("~/")) return path.join(base.home, value.slice(2));
  return path.resolve(base.cwd, value);
}

/**
 * A repository as the AgentHost takes it: a URL (file://, git://, ssh://, https://, …) or an
 * scp-like `host:path` as given, a local path made absolute. As git decides: a colon before
 * any slash makes it scp-like (`./a:b` is a path).
 */
export function repositoryOf(value: string, base: PathBase): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return value;
  const colon = value.indexOf(":");
  const slash = value.indexOf("/");
  if (colon > 0 && (slash < 0 || colon < slash) && !value.startsWith("~")) return value;
  return localPath(value, base);
}

/**
 * Sets `spec.workspace` and `spec.checks` from the submit flags, over what a spec file gave:
 * --repo/--ref/--branch/--push for a git workspace, --path/--read-only for a host folder,
 * --check (in order) and --check-timeout for the checks. A flag that has nothing to apply to
 * is refused with what to use instead.
 */
export function applyWorkspaceFlags(spec: TaskSpec, p: ParsedCommand, base: PathBase): void {
  const repo = nonEmpty(p, "repo", "REPO");
  const dir = nonEmpty(p, "path", "DIR");
  if (repo !== undefined && dir !== undefined)
    throw new UsageError(
      "--repo and --path name two workspaces; give one: --repo REPO for a git repository the " +
        "agent works on in a worktree of its own (its work comes back as a branch), or " +
        "--path DIR for a host folder it works in as it is",
    );
  if (repo !== undefined) {
    const kind = spec.workspace?.kind;
    const git = kind?.case === "git" ? kind.value : create(GitWorkspaceSchema);
    git.repository = repositoryOf(repo, base);
    spec.workspace = create(WorkspaceSchema, { kind: { case: "git", value: git } });
  } else if (dir !== undefined) {
    const kind = spec.workspace?.kind;
    const host = kind?.case === "hostPath" ? kind.value : create(HostPathWorkspaceSchema);
    host.path = localPath(dir, base);
    spec.workspace = create(WorkspaceSchema, { kind: { case: "hostPath", value: host } });
  }
  const kind = spec.workspace?.kind;

  const ref = str(p, "ref");
  const branch = str(p, "branch");
  const gitFlags = [
    ...(ref !== undefined ? ["--ref"] : []),
    ...(branch !== undefined ? ["--branch"] : []),
    ...(bool(p, "push") ? ["--push"] : []),
  ];
  if (gitFlags.length > 0) {
    if (kind?.case !== "git")
      throw new UsageError(
        `${gitFlags.join(", ")} ${gitFlags.length === 1 ? "goes" : "go"} with --repo REPO, ` +
          "the git repository the agent works on" +
          (dir !== undefined ? "; a --path folder is worked in as it is, with no branch" : ""),
      );
    if (ref !== undefined) kind.value.ref = ref;
    if (branch !== undefined) kind.value.branch = branch;
    if (bool(p, "push")) kind.value.push = true;
  }
  if (bool(p, "read-only")) {
    if (kind?.case !== "hostPath")
      throw new UsageError(
        "--read-only goes with --path DIR, a host folder to mount read-only (e.g. for a review)" +
          (repo !== undefined
            ? "; a --repo workspace is a worktree of its own and leaves the repository as it " +
              "is unless you add --push"
            : ""),
      );
    kind.value.readOnly = true;
  }
  applyCheckFlags(spec, p);
}

/** --check replaces the spec file's checks; --check-timeout applies to every check. */
function applyCheckFlags(spec: TaskSpec, p: ParsedCommand): void {
  const commands = list(p, "check");
  for (const c of commands)
    if (c.trim() === "") throw new UsageError('--check needs a command, as in: --check "npm test"');
  if (commands.length > 0)
    spec.checks = commands.map((command) => create(CheckSchema, { command }));
  const timeout = str(p, "check-timeout");
  if (timeout === undefined) return;
  const seconds = Number(timeout);
  if (timeout.trim() === "" || !Number.isInteger(seconds) || seconds < 1 || seconds > 2 ** 31 - 1)
    throw new UsageError(
      `--check-timeout must be a whole number of seconds, 1 or more, got "${oneLine(timeout, 40)}"`,
    );
  if (spec.checks.length === 0)
    throw new UsageError(
      '--check-timeout is the time limit of each --check; add the checks, as in: --check "npm test" --check-timeout 600',
    );
  for (const c of spec.checks) c.timeoutSeconds = seconds;
}

function nonEmpty(p: ParsedCommand, flag: string, arg: string): string | undefined {
  const v = str(p, flag);
  if (v !== undefined && v.trim() === "") throw new UsageError(`--${flag} needs a ${arg}`);
  return v;
}
