import { mkdirSync } from "node:fs";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import type { Logger } from "../shared/log.ts";
import { storePragmas } from "../shared/sqlite.ts";

/** Characters per chunk GetTaskOutput sends: at most 4 UTF-8 bytes each, so at most 1 MiB. */
export const CHUNK_CHARS = 256 * 1024;

/** Most whole-output bytes kept per task; lines past it keep only their cut event. */
export const MAX_TASK_ARTIFACT_BYTES = 64 * 1024 * 1024;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS artifacts (
  task_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  bytes INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (task_id, seq)
);
`;

/**
 * The whole of what events and results hold only cut short (see output-bounds.ts): a task's
 * long output lines, keyed by their event's seq, and its long result text (seq 0). In its own
 * SQLite file beside the task store (`artifacts.db`), written before nothing depends on it:
 * losing one loses only the long form of an event that is itself stored. Bounded per task.
 */
export class ArtifactStore {
  private readonly db: DatabaseSync;
  private readonly log: Logger;
  private readonly maxTaskBytes: number;

  constructor(dataDir: string, log: Logger, maxTaskBytes = MAX_TASK_ARTIFACT_BYTES) {
    mkdirSync(dataDir, { recursive: true });
    this.db = new DatabaseSync(path.join(dataDir, "artifacts.db"));
    this.db.exec(storePragmas({ synchronous: false }));
    this.db.exec(SCHEMA);
    this.log = log;
    this.maxTaskBytes = maxTaskBytes;
  }

  /**
   * Keeps the whole text of a task's event (or, for seq 0, its result). Returns false when it
   * was not kept: over the task's bound, or the disk refused it (never throws: the cut event
   * is what matters, and it is stored either way).
   */
  keep(taskId: string, seq: number, text: string): boolean {
    const bytes = Buffer.byteLength(text, "utf8");
    try {
      const row = this.db
        .prepare(
          "SELECT COALESCE(SUM(bytes), 0) AS n FROM artifacts WHERE task_id = ? AND seq != ?",
        )
        .get(taskId, seq) as { n: number };
      if (row.n + bytes > this.maxTaskBytes) return false;
      this.db
        .prepare("INSERT OR REPLACE INTO artifacts (task_id, seq, bytes, body) VALUES (?, ?, ?, ?)")
        .run(taskId, seq, bytes, text);
      return true;
    } catch (e) {
      this.log.warn("could not keep a long output whole; its event stays cut", {
        task_id: taskId,
        seq,
        error: e instanceof Error ? e.message : String(e),
      });
      return false;
    }
  }

  /** Whether the whole of a task's event (or result, seq 0) is kept. */
  has(taskId: string, seq: number): boolean {
    return (
      this.db.prepare("SELECT 1 FROM artifacts WHERE task_id = ? AND seq = ?").get(taskId, seq) !==
      undefined
    );
  }

  /** The kept whole, in chunks of at most CHUNK_CHARS characters, read from disk one at a time. */
  *chunks(taskId: string, seq: number): Generator<string> {
    const part = this.db.prepare(
      "SELECT substr(body, ?, ?) AS part FROM artifacts WHERE task_id = ? AND seq = ?",
    );
    for (let from = 1; ; from += CHUNK_CHARS) {
      const row = part.get(from, CHUNK_CHARS, taskId, seq) as { part: string } | undefined;
      if (!row || row.part === "") return;
      yield row.part;
      if (row.part.length < CHUNK_CHARS) return;
    }
  }

  /** Drops a task's artifacts (with its events, when those are dropped). */
  forget(taskId: string): void {
    this.db.prepare("DELETE FROM artifacts WHERE task_id = ?").run(taskId);
  }

  close(): void {
    this.db.close();
  }
}
