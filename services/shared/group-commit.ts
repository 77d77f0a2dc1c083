import type { DatabaseSync, StatementSync } from "node:sqlite";

interface Op {
  write: () => unknown;
  applied: ((result: unknown) => void) | undefined;
  resolve: (result: unknown) => void;
  reject: (error: unknown) => void;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/**
 * Group commit: writes asked for in the same turn of the event loop share one transaction,
 * so one disk sync (synchronous = FULL) makes a whole batch durable. Each write runs in its
 * own savepoint (a failing one is undone alone and rejects alone); `applied` callbacks run
 * after the COMMIT, in the order the writes were asked for, before any promise settles.
 *
 * A batch whose transaction cannot be begun or committed, or that SQLite rolls back whole (a
 * write that spills to a full disk does that), rejects every write of that batch and no
 * other; `flush` itself never throws, so a failing disk never ends the process. A `write`
 * must touch only the database: whatever it did is undone when it fails.
 */
export class GroupCommit {
  private readonly db: DatabaseSync;
  /** Transaction control, prepared once (not parsed again for every batch and write). */
  private readonly sql: Record<"begin" | "commit" | "savepoint" | "release", StatementSync>;
  private queue: Op[] = [];
  private scheduled: NodeJS.Immediate | undefined;

  constructor(db: DatabaseSync) {
    this.db = db;
    this.sql = {
      begin: db.prepare("BEGIN IMMEDIATE"),
      commit: db.prepare("COMMIT"),
      savepoint: db.prepare("SAVEPOINT op"),
      release: db.prepare("RELEASE op"),
    };
  }

  /** Runs `write` in the next batch; resolves once its batch is on disk. */
  run<T>(write: () => T, applied?: (result: T) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({
        write,
        applied: applied as ((r: unknown) => void) | undefined,
        resolve: resolve as (r: unknown) => void,
        reject,
      });
      this.scheduled ??= setImmediate(() => this.flush());
    });
  }

  /** Commits what is queued now (also called on close); every write of it settles. */
  flush(): void {
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) return;
    const outcomes = this.commit(batch);
    batch.forEach((op, i) => {
      const outcome = outcomes[i]!;
      if (!outcome.ok) return;
      try {
        op.applied?.(outcome.value);
      } catch (error) {
        outcomes[i] = { ok: false, error };
      }
    });
    batch.forEach((op, i) => {
      const outcome = outcomes[i]!;
      if (outcome.ok) op.resolve(outcome.value);
      else op.reject(outcome.error);
    });
  }

  /** Runs the batch in one transaction; one outcome per write, all failed if it did not commit. */
  private commit(batch: Op[]): Outcome[] {
    const failAll = (error: unknown): Outcome[] => batch.map(() => ({ ok: false, error }));
    try {
      // A transaction left open by a failed ROLLBACK would refuse every later BEGIN.
      if (this.db.isTransaction) this.db.exec("ROLLBACK");
      this.sql.begin.run();
    } catch (error) {
      return failAll(error);
    }
    const outcomes: Outcome[] = [];
    // A write alone in its batch needs no savepoint: undoing it is rolling the batch back.
    const alone = batch.length === 1;
    for (const op of batch) {
      try {
        if (!alone) this.sql.savepoint.run();
        outcomes.push({ ok: true, value: op.write() });
        if (!alone) this.sql.release.run();
      } catch (error) {
        if (alone) {
          this.rollback();
          return failAll(error);
        }
        if (!this.undo()) {
          // SQLite rolled the whole transaction back: no write of this batch is stored.
          return failAll(error);
        }
        outcomes.push({ ok: false, error });
      }
    }
    try {
      this.sql.commit.run();
    } catch (error) {
      this.rollback();
      return failAll(error);
    }
    return outcomes;
  }

  /** Undoes the current write's savepoint; false when the transaction is gone. */
  private undo(): boolean {
    if (!this.db.isTransaction) return false;
    try {
      this.db.exec("ROLLBACK TO op");
      this.db.exec("RELEASE op");
      return true;
    } catch {
      this.rollback();
      return false;
    }
  }

  private rollback(): void {
    try {
      if (this.db.isTransaction) this.db.exec("ROLLBACK");
    } catch {
      // nothing more to undo: the next batch rolls back what is left before it begins
    }
  }
}
