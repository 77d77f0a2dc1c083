/** What a task asks of its git workspace. */
export interface GitWorkspaceRequest {
  taskId: string;
  /** 1 for the first attempt. */
  attempt: number;
  agentId: string;
  /** An absolute local path to a repository or bare repository, or a file, git, ssh or https URL. */
  repository: string;
  /** A branch, tag or commit id of the source; "" = the source's HEAD. */
  ref: string;
  /** The result branch; "" = `conductor/<taskId>`. */
  branch: string;
  /** Push the result branch back to the source after each attempt. */
  push: boolean;
}

/** How a file differs between the task's base and the result branch. */
export type FileStatus = "added" | "modified" | "deleted" | "renamed" | "type_changed";

/** One changed file: lines added and deleted (0 and 0 for binary files). */
export interface FileChange {
  path: string;
  /** The path before a rename; "" unless renamed. */
  oldPath: string;
  status: FileStatus;
  additions: number;
  deletions: number;
  binary: boolean;
}

/** What an attempt left on the result branch. */
export interface Change {
  /** The commit the task started from at its first attempt (fixed for the task). */
  baseCommit: string;
  /** The result branch's head after this attempt (== baseCommit if never changed). */
  headCommit: string;
  branch: string;
  /** base..head, renames detected, binary files flagged; sorted by path. */
  files: FileChange[];
  /** How many files differ: files.length, unless the change was too big to list whole. */
  filesTotal?: number;
  /** This attempt made a commit (false: nothing changed). */
  committed: boolean;
  pushed: boolean;
  /** Paths of this attempt's worktree git could not commit: see Snapshot. */
  notCommitted?: NotCommitted;
}

/** Paths git could not commit: the first MAX_NOT_COMMITTED, and how many in all. */
export interface NotCommitted {
  paths: string[];
  total: number;
}

/** An attempt's worktree, ready for the agent; JSON-serialisable (it is the durable record). */
export interface Prepared {
  taskId: string;
  attempt: number;
  agentId: string;
  /** The worktree's folder (the agent's to change). */
  worktree: string;
  baseCommit: string;
  /** The commit the worktree was checked out at: the result branch's head, else the base. */
  startCommit: string;
  /** The start commit's tree: an attempt whose tree is this one changed nothing. */
  startTree: string;
  branch: string;
  /** The normalised repository (path or URL) the task named. */
  repository: string;
  push: boolean;
  /** The cached bare clone holding the worktree's admin dir and the result branch. */
  cache: string;
  /** The worktree's admin dir (`<cache>/worktrees/<name>`), read before the agent ran. */
  adminDir: string;
  /** The result branch's value when prepared ("" = it did not exist): finish moves it from there. */
  branchWas: string;
}
