import type { DatabaseSync } from "node:sqlite";

interface Op {
  write: () => unknown;
  applied: ((result: unknown) => void) | undefined;
  resolve: (result: unknown) => void;
  reject: (error: unknown) => void;
}

/**
 * Group commit: writes asked for in the same turn of the event loop share one transaction,
 * so one disk sync (synchronous = FULL) makes a whole batch durable. Each write runs in its
 * own savepoint (a failing one is undone alone and rejects alone); `applied` callbacks run
 * after the COMMIT, in the order the writes were asked for, before any promise settles.
 */
export class GroupCommit {
  private readonly db: DatabaseSync;
  private queue: Op[] = [];
  private scheduled: NodeJS.Immediate | undefined;

  constructor(db: DatabaseSync) {
    this.db = db;
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

  /** Commits what is queued now (also called on close). */
  flush(): void {
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) return;
    const outcomes: ({ ok: true; value: unknown } | { ok: false; error: unknown })[] = [];
    try {
      this.db.exec("BEGIN IMMEDIATE");
    } catch (error) {
      for (const op of batch) op.reject(error);
      return;
    }
    for (const op of batch) {
      this.db.exec("SAVEPOINT op");
      try {
        outcomes.push({ ok: true, value: op.write() });
        this.db.exec("RELEASE op");
      } catch (error) {
        this.db.exec("ROLLBACK TO op");
        this.db.exec("RELEASE op");
        outcomes.push({ ok: false, error });
      }
    }
    try {
      this.db.exec("COMMIT");
    } catch (error) {
      try {
        this.db.exec("ROLLBACK");
      } catch {
        // the failed COMMIT may have ended the transaction already
      }
      for (const op of batch) op.reject(error);
      return;
    }
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
}
