import { closeSync, fsyncSync, openSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import type { NotCommitted, Prepared } from "./types.ts";

/**
 * Where a workspace is in its life: `preparing` (the agent has not run: nothing to commit),
 * `ready` (the agent may have changed it: commit before removing), `removing` (committed and
 * pushed as asked: only removal is left).
 */
export type Phase = "preparing" | "ready" | "removing";

/** The durable record of one task's worktree, in `<dataDir>/workspaces/<taskId>.json`. */
export interface WorkspaceRecord extends Prepared {
  phase: Phase;
  /** Set with phase `removing`: what the attempt left on the branch. */
  result?: { head: string; committed: boolean; pushed: boolean; notCommitted?: NotCommitted };
}

/** The records of unfinished workspaces: one JSON file per task, replaced atomically. */
export class Records {
  readonly dir: string;
  constructor(dir: string) {
    this.dir = dir;
  }

  file(taskId: string): string {
    return path.join(this.dir, `${taskId}.json`);
  }

  /** Writes the record durably: a temporary file, fsync, rename, fsync of the folder. */
  async write(r: WorkspaceRecord): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const file = this.file(r.taskId);
    const tmp = `${file}.tmp`;
    await writeFile(tmp, JSON.stringify(r, null, 2) + "\n", { mode: 0o600, flush: true });
    await rename(tmp, file);
    syncDir(this.dir);
  }

  /** The task's record, or undefined when it has none. */
  async read(taskId: string): Promise<WorkspaceRecord | undefined> {
    try {
      return JSON.parse(await readFile(this.file(taskId), "utf8")) as WorkspaceRecord;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw e;
    }
  }

  async remove(taskId: string): Promise<void> {
    await rm(this.file(taskId), { force: true });
    syncDir(this.dir);
  }

  /** The task ids that have a record (a temporary file an interrupted write left is not one). */
  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw e;
    }
    return names
      .filter((n) => n.endsWith(".json"))
      .map((n) => n.slice(0, -".json".length))
      .sort();
  }
}

function syncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
