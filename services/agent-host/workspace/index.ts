export { WorkspaceError, type WorkspaceCode } from "./errors.ts";
export type { Author } from "./commit.ts";
export { DEFAULT_COMMIT_BOUNDS, type CommitBounds } from "./worktree.ts";
export type { Change, FileChange, FileStatus, GitWorkspaceRequest, Prepared } from "./types.ts";
export { RECOVERED, unsavedDir, Workspaces, type WorkspacesOptions } from "./workspaces.ts";
export { setAside } from "./lifecycle.ts";
export { discoveryEnv } from "./git-env.ts";
