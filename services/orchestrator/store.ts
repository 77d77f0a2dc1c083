import { mkdirSync } from "node:fs";
import path from "node:path";
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { clone, create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { StorageFull, isDiskFull } from "../shared/errors.ts";
import { GroupCommit } from "../shared/group-commit.ts";
import {
  TaskEventSchema,
  TaskResultSchema,
  TaskSchema,
  TaskSpecSchema,
  TaskState,
  type Task,
  type TaskEvent,
  type TaskResult,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { TaskGroupSpecSchema, type TaskGroupSpec } from "../../gen/conductor/v1/group_pb.js";
import { storePragmas } from "../shared/sqlite.ts";

/** Task states from which nothing more happens. */
export const FINAL_STATES: ReadonlySet<TaskState> = new Set([
  TaskState.SUCCEEDED,
  TaskState.FAILED,
  TaskState.CANCELLED,
  TaskState.TIMED_OUT,
]);

/** Columns added after the first release, with their definitions: added to older databases at open. */
/**
 * Most tokens a task's row counts (2^40, about a trillion): a model upstream that reports more
 * is not believed past it. Sums of rows are read at most Number.MAX_SAFE_INTEGER: node:sqlite
 * refuses to read a larger integer as a number, which would make every read of them fail.
 */
const MAX_TASK_TOKENS = 2 ** 40;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** A task's token count as its row keeps it: 0 to MAX_TASK_TOKENS. */
function tokenColumn(n: bigint | undefined): number {
  return Math.max(0, Math.min(MAX_TASK_TOKENS, Number(n ?? 0n)));
}

const ADDED_COLUMNS: [table: string, name: string, definition: string][] = [
  ["tasks", "trace_parent", "TEXT"], // tracing
  ["tasks", "host", "TEXT NOT NULL DEFAULT ''"], // the AgentHost (HostLink.address) of the current attempt
  // The size of an output event's body (0 for other events and for rows from before): what the
  // output retention counts and trims.
  ["events", "output_bytes", "INTEGER NOT NULL DEFAULT 0"],
  // Dependencies of a queued task not yet SUCCEEDED (spec.depends_on): it is scheduled at 0.
  ["tasks", "waiting", "INTEGER NOT NULL DEFAULT 0"],
  // The task group (groups.id) it belongs to, and its name there ('' for a task on its own).
  ["tasks", "group_id", "TEXT NOT NULL DEFAULT ''"],
  ["tasks", "member", "TEXT NOT NULL DEFAULT ''"],
  // 1: the task waits for dep_id to end, however it ends (a group's reduce step); 0: to succeed.
  ["task_deps", "ends", "INTEGER NOT NULL DEFAULT 0"],
];

/** Indexes on added columns: made after those columns are. */
const ADDED_INDEXES = `
CREATE INDEX IF NOT EXISTS tasks_by_group ON tasks (group_id, state);
DROP INDEX IF EXISTS tasks_queue;
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (state, waiting, priority DESC, seq);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, seq);
CREATE INDEX IF NOT EXISTS tasks_backoff ON tasks (state, waiting, not_before);
CREATE INDEX IF NOT EXISTS tasks_run_ms ON tasks (run_ms) WHERE run_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS task_deps_by_task ON task_deps (task_id);
`;

/**
 * Counts and totals GetStats and the gauges read, kept by triggers in the transaction of each
 * change to a task: reading them costs the same with 100 tasks or 100,000 (no scan).
 */
const COUNTS = `
CREATE TABLE task_counts (
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (state, priority)
) WITHOUT ROWID;
CREATE TABLE task_totals (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  input_tokens INTEGER NOT NULL,
  output_tokens INTEGER NOT NULL,
  cost_usd REAL NOT NULL
);
INSERT INTO task_counts (state, priority, n) SELECT state, priority, COUNT(*) FROM tasks GROUP BY state, priority;
INSERT INTO task_totals SELECT 1, COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_usd), 0) FROM tasks;
CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
  INSERT INTO task_counts (state, priority, n) VALUES (new.state, new.priority, 1)
    ON CONFLICT (state, priority) DO UPDATE SET n = n + 1;
  UPDATE task_totals SET input_tokens = input_tokens + new.input_tokens,
    output_tokens = output_tokens + new.output_tokens, cost_usd = cost_usd + new.cost_usd;
END;
CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks BEGIN
  UPDATE task_counts SET n = n - 1 WHERE state = old.state AND priority = old.priority;
  UPDATE task_totals SET input_tokens = input_tokens - old.input_tokens,
    output_tokens = output_tokens - old.output_tokens, cost_usd = cost_usd - old.cost_usd;
END;
CREATE TRIGGER tasks_count_state AFTER UPDATE OF state, priority ON tasks
  WHEN old.state IS NOT new.state OR old.priority IS NOT new.priority BEGIN
  UPDATE task_counts SET n = n - 1 WHERE state = old.state AND priority = old.priority;
  INSERT INTO task_counts (state, priority, n) VALUES (new.state, new.priority, 1)
    ON CONFLICT (state, priority) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tasks_count_usage AFTER UPDATE OF input_tokens, output_tokens, cost_usd ON tasks BEGIN
  UPDATE task_totals SET input_tokens = input_tokens + new.input_tokens - old.input_tokens,
    output_tokens = output_tokens + new.output_tokens - old.output_tokens,
    cost_usd = cost_usd + new.cost_usd - old.cost_usd;
END;
`;

/**
 * Finished runs' durations as a histogram kept by triggers, for GetStats' percentiles: bucket
 * b holds run_ms in (2^((b-1)/16), 2^(b/16)] (bucket 0: up to 1 ms), so a percentile read from
 * it costs the same at any number of finished tasks and is at most 4.4% above the exact value
 * (2^(1/16) − 1), as Prometheus' histogram_quantile reads its buckets.
 */
const RUN_BUCKETS_PER_DOUBLING = 16;
const BUCKET = (v: string) =>
  `(CASE WHEN ${v} <= 1 THEN 0 ELSE CAST(ceil(${RUN_BUCKETS_PER_DOUBLING} * log2(${v})) AS INTEGER) END)`;
const RUN_HISTOGRAM = `
CREATE TABLE run_ms_buckets (
  bucket INTEGER PRIMARY KEY,
  n INTEGER NOT NULL
);
INSERT INTO run_ms_buckets (bucket, n)
  SELECT ${BUCKET("run_ms")}, COUNT(*) FROM tasks WHERE run_ms IS NOT NULL GROUP BY 1;
CREATE TRIGGER tasks_run_ms_insert AFTER INSERT ON tasks WHEN new.run_ms IS NOT NULL BEGIN
  INSERT INTO run_ms_buckets (bucket, n) VALUES (${BUCKET("new.run_ms")}, 1)
    ON CONFLICT (bucket) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tasks_run_ms_delete AFTER DELETE ON tasks WHEN old.run_ms IS NOT NULL BEGIN
  UPDATE run_ms_buckets SET n = n - 1 WHERE bucket = ${BUCKET("old.run_ms")};
END;
CREATE TRIGGER tasks_run_ms_update AFTER UPDATE OF run_ms ON tasks
  WHEN old.run_ms IS NOT new.run_ms BEGIN
  UPDATE run_ms_buckets SET n = n - 1
    WHERE old.run_ms IS NOT NULL AND bucket = ${BUCKET("old.run_ms")};
  INSERT INTO run_ms_buckets (bucket, n) SELECT ${BUCKET("new.run_ms")}, 1
    WHERE new.run_ms IS NOT NULL ON CONFLICT (bucket) DO UPDATE SET n = n + 1;
END;
`;

/** Prepared statements kept per store: more distinct SQL than this (IN lists) starts over. */
const MAX_STATEMENTS = 256;

/** Bounds of one page of a task's events (WatchTask reads history in such pages). */
export interface PageLimits {
  maxEvents: number;
  /** Stop after the event that reaches this many bytes (a page holds at least one event). */
  maxBytes: number;
}

/** Most tasks one ListTasks page filtered by labels looks at (labels are not indexed). */
export const LABEL_SCAN_ROWS = 10_000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS tasks (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  idempotency_key TEXT UNIQUE,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  type TEXT NOT NULL,
  spec BLOB NOT NULL,
  agent_id TEXT NOT NULL DEFAULT '',
  attempts INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL,
  not_before INTEGER NOT NULL DEFAULT 0,
  create_time INTEGER NOT NULL,
  start_time INTEGER,
  end_time INTEGER,
  result BLOB,
  run_ms INTEGER,
  input_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  cost_usd REAL NOT NULL DEFAULT 0,
  trace_parent TEXT,
  host TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
  task_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  body BLOB NOT NULL,
  output_bytes INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drained_nodes (
  name TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  idempotency_key TEXT UNIQUE,
  spec BLOB NOT NULL,
  create_time INTEGER NOT NULL,
  max_parallel INTEGER NOT NULL DEFAULT 0,
  fail_fast INTEGER NOT NULL DEFAULT 0,
  reduce_task_id TEXT NOT NULL DEFAULT '',
  cancelled INTEGER NOT NULL DEFAULT 0,
  reason TEXT NOT NULL DEFAULT '',
  end_time INTEGER
);
CREATE TABLE IF NOT EXISTS spend (
  at INTEGER NOT NULL,
  task_id TEXT NOT NULL,
  usd REAL NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS spend_at ON spend (at);
CREATE TABLE IF NOT EXISTS task_deps (
  dep_id TEXT NOT NULL,
  task_id TEXT NOT NULL,
  PRIMARY KEY (dep_id, task_id)
) WITHOUT ROWID;
`;

interface TaskRow {
  seq: number;
  id: string;
  state: number;
  spec: Uint8Array;
  agent_id: string;
  attempts: number;
  max_attempts: number;
  create_time: number;
  start_time: number | null;
  end_time: number | null;
  result: Uint8Array | null;
  group_id: string;
  member: string;
}

/** Where a new task sits in a group, and what it waits for beyond its spec's depends_on. */
export interface Membership {
  groupId: string;
  member: string;
  /** Tasks it waits to end, however they end (a reduce step's members). */
  after?: string[];
}

/** A field update of a task row; only the given fields change. */
export interface TaskUpdate {
  state?: TaskState;
  agentId?: string;
  /** The AgentHost running the current attempt ("" when none). */
  host?: string;
  attempts?: number;
  notBefore?: number;
  startTime?: number | null;
  endTime?: number;
  result?: TaskResult;
  runMs?: number;
}

/** Options of a TaskStore. */
export interface TaskStoreOptions {
  /**
   * Most bytes of agent output kept in one task's events (orchestrator.event_retention_bytes):
   * beyond it the oldest output events are deleted; state changes and results are always kept.
   */
  outputRetentionBytes?: number;
  /**
   * How long a record of spend is kept (the longest spend limit window; an hour at least): what
   * an attempt added to its task's cost, with the task's labels, for spend limits.
   */
  spendRetentionMs?: number;
}

/** What the tasks a set of labels covers spent in a window (spend limits). */
export interface WindowSpend {
  usd: number;
  /** When the oldest spend in the window was recorded (undefined when there is none). */
  oldest?: number;
}

/** Output retention when none is configured (the config's default). */
export const DEFAULT_OUTPUT_RETENTION_BYTES = 64 * 1024 ** 2;

/**
 * The Orchestrator's durable state: tasks and their events in SQLite (WAL, synchronous
 * FULL: a write has reached the disk when a call returns). A write that fails leaves nothing
 * behind (one transaction); one that fails for want of disk space throws StorageFull.
 */
export class TaskStore {
  private readonly db: DatabaseSync;
  private readonly dataDir: string;
  private readonly retentionBytes: number;
  /** Output bytes kept per task with a live attempt (forgotten when it ends). */
  private readonly outputBytes = new Map<string, number>();
  private readonly spendRetentionMs: number;
  /** Bumped whenever spend is recorded: spend limits read the window again after. */
  spendVersion = 0;
  private readonly statements = new Map<string, StatementSync>();
  private readonly batches: GroupCommit;

  constructor(dataDir: string, opts: TaskStoreOptions = {}) {
    this.dataDir = dataDir;
    this.retentionBytes = opts.outputRetentionBytes ?? DEFAULT_OUTPUT_RETENTION_BYTES;
    this.spendRetentionMs = Math.max(3_600_000, opts.spendRetentionMs ?? 0);
    mkdirSync(dataDir, { recursive: true });
    this.db = new DatabaseSync(path.join(dataDir, "orchestrator.db"));
    try {
      this.db.exec(storePragmas({ synchronous: true }));
      // On a full disk an existing, current database opens without writing: reads keep working.
      this.db.exec(SCHEMA);
      for (const [table, name, definition] of ADDED_COLUMNS) {
        const columns = this.sql(`PRAGMA table_info(${table})`).all() as {
          name: string;
        }[];
        if (!columns.some((c) => c.name === name))
          this.db.exec(`ALTER TABLE ${table} ADD COLUMN ${name} ${definition}`);
      }
      this.db.exec(ADDED_INDEXES);
      for (const kept of [COUNTS, RUN_HISTOGRAM]) this.keptByTriggers(kept);
    } catch (e) {
      this.db.close();
      throw isDiskFull(e) ? new StorageFull(dataDir, e) : e;
    }
    this.batches = new GroupCommit(this.db);
  }

  /**
   * Makes the tables and triggers of `sql` (COUNTS, RUN_HISTOGRAM) unless all are there: counted
   * from the tasks as they are, in the transaction that adds them. A database from before them,
   * or with only some of them (a table dropped by hand), gets them whole.
   */
  private keptByTriggers(sql: string): void {
    const pieces = [...sql.matchAll(/CREATE (TABLE|TRIGGER) (\w+)/g)].map(([, kind, name]) => ({
      kind: kind!,
      name: name!,
    }));
    const there = this.sql(
      "SELECT COUNT(*) AS n FROM sqlite_master WHERE name IN (SELECT value FROM json_each(?))",
    );
    if ((there.get(JSON.stringify(pieces.map((p) => p.name))) as { n: number }).n === pieces.length)
      return;
    const drops = pieces.map((p) => `DROP ${p.kind} IF EXISTS ${p.name};`).join("\n");
    this.db.exec(`BEGIN IMMEDIATE; ${drops} ${sql} COMMIT;`);
  }

  /** The prepared statement of `sql`, made once (SQLite parses and plans it then). */
  private sql(sql: string): StatementSync {
    let stmt = this.statements.get(sql);
    if (!stmt) {
      if (this.statements.size >= MAX_STATEMENTS) this.statements.clear();
      stmt = this.db.prepare(sql);
      this.statements.set(sql, stmt);
    }
    return stmt;
  }

  /**
   * The query plan (EXPLAIN QUERY PLAN, details joined by "; ") of each statement this store
   * has run since it opened: what the test of the scheduler's queries reads.
   */
  queryPlans(): Map<string, string> {
    const plans = new Map<string, string>();
    for (const sql of this.statements.keys()) {
      if (!/^\s*(SELECT|UPDATE|DELETE|INSERT)/i.test(sql)) continue;
      const rows = this.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as { detail: string }[];
      plans.set(sql, rows.map((r) => r.detail).join("; "));
    }
    return plans;
  }

  /**
   * Runs `write` in the next group commit: the writes asked for in one turn of the event loop
   * share one transaction and one disk sync. Resolves once its batch is on disk, after
   * `applied`; rejects with what `write` threw (nothing of it stored), or StorageFull when
   * the batch could not be committed for want of disk space.
   */
  commit<T>(write: () => T, applied?: (result: T) => void): Promise<T> {
    return this.batches.run(write, applied).catch((e: unknown) => {
      this.outputBytes.clear(); // counts may include rolled-back rows: recount on next use
      throw isDiskFull(e) ? new StorageFull(this.dataDir, e) : e;
    });
  }

  /** Inserts a new QUEUED task, or returns the existing one with the same idempotency key. */
  insert(
    id: string,
    spec: TaskSpec,
    maxAttempts: number,
    now: number,
    traceParent = "",
    membership?: Membership,
  ): { task: Task; created: boolean } {
    const key = spec.idempotencyKey || null;
    return this.tx(() => {
      if (key) {
        const row = this.sql("SELECT * FROM tasks WHERE idempotency_key = ?").get(key);
        if (row) return { task: toTask(row as unknown as TaskRow), created: false };
      }
      const after = membership?.after ?? [];
      const waiting =
        spec.dependsOn.filter((d) => this.state(d) !== TaskState.SUCCEEDED).length +
        after.filter((d) => !FINAL_STATES.has(this.state(d) ?? TaskState.QUEUED)).length;
      this.sql(
        `INSERT INTO tasks (id, idempotency_key, state, priority, type, spec, max_attempts, create_time, trace_parent, waiting, group_id, member)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        id,
        key,
        TaskState.QUEUED,
        spec.priority,
        spec.type || "generic",
        toBinary(TaskSpecSchema, spec),
        maxAttempts,
        now,
        traceParent || null,
        waiting,
        membership?.groupId ?? "",
        membership?.member ?? "",
      );
      const dep = this.sql("INSERT INTO task_deps (dep_id, task_id, ends) VALUES (?, ?, ?)");
      for (const d of spec.dependsOn) dep.run(d, id, 0);
      for (const d of after) dep.run(d, id, 1);
      // The row as stored, without reading it back: what toTask would give of it.
      const task = create(TaskSchema, {
        id,
        state: TaskState.QUEUED,
        spec: clone(TaskSpecSchema, spec),
        createTime: timestampFromMs(now),
        groupId: membership?.groupId ?? "",
        member: membership?.member ?? "",
      });
      return { task, created: true };
    });
  }

  get(id: string): Task | undefined {
    const row = this.sql("SELECT * FROM tasks WHERE id = ?").get(id);
    return row ? toTask(row as unknown as TaskRow) : undefined;
  }

  /** What observers need of a task without decoding it: type, priority, submit time, trace. */
  meta(
    id: string,
  ): { type: string; priority: number; createdAt: number; traceParent: string } | undefined {
    const row = this.sql(
      "SELECT type, priority, create_time, trace_parent FROM tasks WHERE id = ?",
    ).get(id) as
      | { type: string; priority: number; create_time: number; trace_parent: string | null }
      | undefined;
    if (!row) return undefined;
    return {
      type: row.type,
      priority: row.priority,
      createdAt: row.create_time,
      traceParent: row.trace_parent ?? "",
    };
  }

  /** Queued tasks by priority (what the queue-depth gauge shows). */
  queuedByPriority(): Map<number, number> {
    const rows = this.sql("SELECT priority, n FROM task_counts WHERE state = ? AND n > 0").all(
      TaskState.QUEUED,
    ) as { priority: number; n: number }[];
    return new Map(rows.map((r) => [r.priority, r.n]));
  }

  /** Tasks by state, now. */
  countByState(): Map<TaskState, number> {
    const rows = this.sql(
      "SELECT state, SUM(n) AS n FROM task_counts GROUP BY state HAVING SUM(n) > 0",
    ).all() as { state: number; n: number }[];
    return new Map(rows.map((r) => [r.state as TaskState, r.n]));
  }

  /** Names of the nodes drained (`conductor nodes drain`): kept across restarts. */
  drainedNodes(): Set<string> {
    const rows = this.sql("SELECT name FROM drained_nodes").all() as { name: string }[];
    return new Set(rows.map((r) => r.name));
  }

  /** Records that a node is drained, or no longer is. */
  setDrained(name: string, drained: boolean): void {
    this.sql(
      drained
        ? "INSERT OR IGNORE INTO drained_nodes (name) VALUES (?)"
        : "DELETE FROM drained_nodes WHERE name = ?",
    ).run(name);
  }

  /** The AgentHost (its address) recorded for a task's current attempt; "" when none. */
  attemptHost(id: string): string {
    const row = this.sql("SELECT host FROM tasks WHERE id = ?").get(id) as
      { host: string } | undefined;
    return row?.host ?? "";
  }

  /** Max attempts stored with a task (the spec's, or the default at submit). */
  maxAttempts(id: string): number {
    const row = this.sql("SELECT max_attempts FROM tasks WHERE id = ?").get(id) as
      { max_attempts: number } | undefined;
    return row?.max_attempts ?? 1;
  }

  /**
   * Changes a task only if it is still in `from` (one of them); returns whether it did. A
   * result that costs more than the task's stored one records the difference as spend at `now`
   * (what the attempt added: a result's cost covers all attempts), in the same transaction.
   */
  transition(id: string, from: TaskState[], update: TaskUpdate, now = Date.now()): boolean {
    const sets: string[] = [];
    const args: (string | number | null | Uint8Array)[] = [];
    const put = (col: string, v: string | number | null | Uint8Array) => {
      sets.push(`${col} = ?`);
      args.push(v);
    };
    if (update.state !== undefined) put("state", update.state);
    if (update.agentId !== undefined) put("agent_id", update.agentId);
    if (update.host !== undefined) put("host", update.host);
    if (update.attempts !== undefined) put("attempts", update.attempts);
    if (update.notBefore !== undefined) put("not_before", update.notBefore);
    if (update.startTime !== undefined) put("start_time", update.startTime);
    if (update.endTime !== undefined) put("end_time", update.endTime);
    if (update.runMs !== undefined) put("run_ms", update.runMs);
    if (update.result !== undefined) {
      put("result", toBinary(TaskResultSchema, update.result));
      put("input_tokens", tokenColumn(update.result.usage?.inputTokens));
      put("output_tokens", tokenColumn(update.result.usage?.outputTokens));
      put("cost_usd", update.result.costUsd);
    }
    const marks = from.map(() => "?").join(",");
    const sql = `UPDATE tasks SET ${sets.join(", ")} WHERE id = ? AND state IN (${marks})`;
    const result = update.result;
    return this.tx(() => {
      const before =
        result && result.costUsd > 0
          ? (this.sql("SELECT cost_usd, spec FROM tasks WHERE id = ?").get(id) as
              { cost_usd: number; spec: Uint8Array } | undefined)
          : undefined;
      if (this.sql(sql).run(...args, id, ...from).changes !== 1) return false;
      if (before && result!.costUsd > before.cost_usd) {
        const labels = fromBinary(TaskSpecSchema, before.spec).labels;
        this.recordSpend(id, result!.costUsd - before.cost_usd, labels, now);
      }
      return true;
    });
  }

  /** Records spend (and forgets what is older than any window needs). */
  private recordSpend(id: string, usd: number, labels: Record<string, string>, now: number): void {
    this.sql("INSERT INTO spend (at, task_id, usd, labels) VALUES (?, ?, ?, ?)").run(
      now,
      id,
      usd,
      JSON.stringify(labels),
    );
    this.sql("DELETE FROM spend WHERE at <= ?").run(now - this.spendRetentionMs);
    this.spendVersion++;
  }

  /**
   * What tasks whose labels include all of `labels` spent after `since` (ms), and when the
   * oldest of it was recorded: one indexed query over the window's records.
   */
  windowSpend(labels: Record<string, string>, since: number): WindowSpend {
    const { where, args } = spendFilter(labels);
    const row = this.sql(
      `SELECT COALESCE(SUM(usd), 0) AS usd, MIN(at) AS oldest FROM spend WHERE ${where}`,
    ).get(since, ...args) as { usd: number; oldest: number | null };
    return { usd: row.usd, ...(row.oldest !== null ? { oldest: row.oldest } : {}) };
  }

  /**
   * The time of the oldest spend after `since` (among tasks whose labels include `labels`)
   * whose leaving the window brings what is left in it below `limit`: the window allows again
   * one window after it (asked when what is in the window is at or over the limit).
   */
  spendReleasedBy(
    labels: Record<string, string>,
    since: number,
    limit: number,
  ): number | undefined {
    const { where, args } = spendFilter(labels);
    // `newer`: what was spent after each record (records of the same ms leave together).
    const row = this.sql(
      `SELECT MIN(at) AS at FROM (
           SELECT at, COALESCE(SUM(usd) OVER (ORDER BY at DESC RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS newer
           FROM spend WHERE ${where}
         ) WHERE newer < ?`,
    ).get(since, ...args, limit) as { at: number | null };
    return row.at ?? undefined;
  }

  /**
   * Queued tasks that may start now: highest priority first, FIFO within a priority; none of
   * the groups in `full` (at their max_parallel). Walks tasks_ready in its order and stops at
   * `limit` (named: the planner would otherwise pick tasks_backoff and sort every queued task).
   */
  nextQueued(limit: number, now: number, full: string[] = []): Task[] {
    const rows = this.sql(
      `SELECT * FROM tasks INDEXED BY tasks_ready WHERE state = ? AND waiting = 0 AND not_before <= ?${full.length ? " AND group_id NOT IN (SELECT value FROM json_each(?))" : ""} ORDER BY priority DESC, seq ASC LIMIT ?`,
    ).all(TaskState.QUEUED, now, ...(full.length ? [JSON.stringify(full)] : []), limit);
    return rows.map((r) => toTask(r as unknown as TaskRow));
  }

  /** When the earliest backed-off queued task becomes eligible, if any is waiting. */
  nextWakeup(now: number): number | undefined {
    const row = this.sql(
      "SELECT MIN(not_before) AS t FROM tasks WHERE state = ? AND waiting = 0 AND not_before > ?",
    ).get(TaskState.QUEUED, now) as { t: number | null };
    return row.t ?? undefined;
  }

  /** What keeps a task queued that its row holds: dependencies to wait for, a retry's backoff. */
  queueInfo(id: string): { waiting: number; notBefore: number } | undefined {
    const row = this.sql("SELECT waiting, not_before FROM tasks WHERE id = ?").get(id) as
      { waiting: number; not_before: number } | undefined;
    return row && { waiting: row.waiting, notBefore: row.not_before };
  }

  /**
   * Queued tasks that wait for `id`: to succeed (spec.depends_on), or, with `ends`, to end
   * however it ends (a group's reduce step).
   */
  queuedDependents(id: string): { id: string; ends: boolean }[] {
    const rows = this.sql(
      `SELECT t.id, d.ends FROM task_deps d JOIN tasks t ON t.id = d.task_id WHERE d.dep_id = ? AND t.state = ?`,
    ).all(id, TaskState.QUEUED) as { id: string; ends: number }[];
    return rows.map((r) => ({ id: r.id, ends: r.ends === 1 }));
  }

  /** One dependency of each of `ids` is through: one less to wait for. */
  dependencySucceeded(ids: string[]): void {
    const stmt = this.sql("UPDATE tasks SET waiting = MAX(waiting - 1, 0) WHERE id = ?");
    for (const id of ids) stmt.run(id);
  }

  /**
   * Queued tasks still waiting for dependencies (or the one `only`), each with its count recomputed from the
   * dependencies' states now (after a restart) and the first dependency that ended otherwise
   * than SUCCEEDED, if any.
   */
  waitingTasks(
    only?: string,
  ): { id: string; waiting: number; failed?: { id: string; state: TaskState } }[] {
    const rows = this.sql(
      `SELECT d.task_id AS id, d.dep_id AS dep, d.ends, COALESCE(t.state, 0) AS state
         FROM tasks w JOIN task_deps d ON d.task_id = w.id LEFT JOIN tasks t ON t.id = d.dep_id
         WHERE w.state = ? AND w.waiting > 0 ${only === undefined ? "" : "AND w.id = ?"}
         ORDER BY w.seq`,
    ).all(...(only === undefined ? [TaskState.QUEUED] : [TaskState.QUEUED, only])) as {
      id: string;
      dep: string;
      ends: number;
      state: TaskState;
    }[];
    const out = new Map<
      string,
      { id: string; waiting: number; failed?: { id: string; state: TaskState } }
    >();
    for (const r of rows) {
      const w = out.get(r.id) ?? { id: r.id, waiting: 0 };
      out.set(r.id, w);
      const ended = FINAL_STATES.has(r.state);
      if (r.ends === 1) {
        if (!ended) w.waiting++;
        continue;
      }
      if (r.state !== TaskState.SUCCEEDED) w.waiting++;
      if (ended && r.state !== TaskState.SUCCEEDED && !w.failed)
        w.failed = { id: r.dep, state: r.state };
    }
    return [...out.values()];
  }

  /** Stores a new group's row (its tasks are inserted in the same transaction by the caller). */
  insertGroup(g: { id: string; spec: TaskGroupSpec; now: number; reduceTaskId: string }): void {
    this.sql(
      `INSERT INTO groups (id, idempotency_key, spec, create_time, max_parallel, fail_fast, reduce_task_id)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      g.id,
      g.spec.idempotencyKey || null,
      toBinary(TaskGroupSpecSchema, g.spec),
      g.now,
      g.spec.maxParallel,
      g.spec.failFast ? 1 : 0,
      g.reduceTaskId,
    );
  }

  /** A group's row by id, or by its idempotency key. */
  group(by: { id: string } | { key: string }): GroupRow | undefined {
    const row =
      "id" in by
        ? this.sql(`SELECT ${GROUP_COLUMNS} FROM groups WHERE id = ?`).get(by.id)
        : this.sql(`SELECT ${GROUP_COLUMNS} FROM groups WHERE idempotency_key = ?`).get(by.key);
    return row ? this.toGroupRow(row as unknown as RawGroupRow) : undefined;
  }

  /** A group's row; its spec is read and decoded when first asked for. */
  private toGroupRow(r: RawGroupRow): GroupRow {
    let spec: TaskGroupSpec | undefined;
    const read = () => {
      const row = this.sql("SELECT spec FROM groups WHERE seq = ?").get(r.seq) as {
        spec: Uint8Array;
      };
      return fromBinary(TaskGroupSpecSchema, row.spec);
    };
    return {
      seq: r.seq,
      id: r.id,
      get spec() {
        return (spec ??= read());
      },
      createTime: r.create_time,
      maxParallel: r.max_parallel,
      failFast: r.fail_fast === 1,
      reduceTaskId: r.reduce_task_id,
      cancelled: r.cancelled === 1,
      reason: r.reason,
      endTime: r.end_time ?? undefined,
    };
  }

  /** A page of groups, newest first; the cursor is the last row's sequence number. */
  groups(pageSize: number, before?: number): { groups: GroupRow[]; next?: number } {
    const rows = this.sql(
      `SELECT ${GROUP_COLUMNS} FROM groups WHERE seq < ? ORDER BY seq DESC LIMIT ?`,
    ).all(before ?? Number.MAX_SAFE_INTEGER, pageSize + 1) as unknown as RawGroupRow[];
    const page = rows.slice(0, pageSize).map((r) => this.toGroupRow(r));
    return rows.length > pageSize
      ? { groups: page, next: page[page.length - 1]!.seq }
      : { groups: page };
  }

  /** Groups not yet ended (their end_time unset). */
  openGroups(): GroupRow[] {
    return (
      this.sql(
        `SELECT ${GROUP_COLUMNS} FROM groups WHERE end_time IS NULL`,
      ).all() as unknown as RawGroupRow[]
    ).map((r) => this.toGroupRow(r));
  }

  /** Marks a group cut short (fail_fast, its budget, or cancelled: `cancelled`), once. */
  cutGroup(id: string, reason: string, cancelled: boolean): boolean {
    return (
      this.sql(
        "UPDATE groups SET reason = ?, cancelled = ? WHERE id = ? AND reason = '' AND end_time IS NULL",
      ).run(reason, cancelled ? 1 : 0, id).changes === 1
    );
  }

  /** Records that a group's last task ended. */
  endGroup(id: string, now: number): void {
    this.sql("UPDATE groups SET end_time = ? WHERE id = ? AND end_time IS NULL").run(now, id);
  }

  /** A group's tasks by state, with their summed usage, cost and run time. */
  groupTotals(id: string): GroupTotals {
    const rows = this.sql(
      `SELECT state, COUNT(*) AS n, MIN(SUM(input_tokens), ${MAX_SAFE}) AS i,
                MIN(SUM(output_tokens), ${MAX_SAFE}) AS o,
                SUM(cost_usd) AS c, COALESCE(SUM(run_ms), 0) AS ms, MAX(end_time) AS last
         FROM tasks WHERE group_id = ? GROUP BY state`,
    ).all(id) as {
      state: TaskState;
      n: number;
      i: number;
      o: number;
      c: number;
      ms: number;
      last: number | null;
    }[];
    const totals: GroupTotals = {
      byState: new Map(),
      count: 0,
      inputTokens: 0,
      outputTokens: 0,
      costUsd: 0,
      runMs: 0,
      lastEnd: 0,
    };
    for (const r of rows) {
      totals.byState.set(r.state, r.n);
      totals.count += r.n;
      totals.inputTokens += r.i;
      totals.outputTokens += r.o;
      totals.costUsd += r.c;
      totals.runMs += r.ms;
      totals.lastEnd = Math.max(totals.lastEnd, r.last ?? 0);
    }
    return totals;
  }

  /** A group's tasks, in the order they were given (the reduce step last). */
  groupTasks(id: string): Task[] {
    return this.sql("SELECT * FROM tasks WHERE group_id = ? ORDER BY seq")
      .all(id)
      .map((r) => toTask(r as unknown as TaskRow));
  }

  /** Ids of a group's tasks in these states. */
  groupTaskIds(id: string, states: TaskState[]): string[] {
    const marks = states.map(() => "?").join(",");
    return (
      this.sql(`SELECT id FROM tasks WHERE group_id = ? AND state IN (${marks}) ORDER BY seq`).all(
        id,
        ...states,
      ) as { id: string }[]
    ).map((r) => r.id);
  }

  /** How many of a group's tasks run (scheduled or running) on each AgentHost (its address). */
  groupHosts(id: string): Map<string, number> {
    const rows = this.sql(
      "SELECT host, COUNT(*) AS n FROM tasks WHERE group_id = ? AND state IN (?, ?) GROUP BY host",
    ).all(id, TaskState.SCHEDULED, TaskState.RUNNING) as { host: string; n: number }[];
    return new Map(rows.map((r) => [r.host, r.n]));
  }

  /** The group a task belongs to and its member name there (both empty for none). */
  groupOf(taskId: string): { groupId: string; member: string } {
    const row = this.sql("SELECT group_id, member FROM tasks WHERE id = ?").get(taskId) as
      { group_id: string; member: string } | undefined;
    return { groupId: row?.group_id ?? "", member: row?.member ?? "" };
  }

  /**
   * Open groups with max_parallel whose running (scheduled or running) tasks reach it, and
   * how many more each may start now.
   */
  groupRoom(): Map<string, number> {
    const rows = this.sql(
      `SELECT g.id, g.max_parallel - (SELECT COUNT(*) FROM tasks t WHERE t.group_id = g.id AND t.state IN (?, ?)) AS room
         FROM groups g WHERE g.end_time IS NULL AND g.max_parallel > 0`,
    ).all(TaskState.SCHEDULED, TaskState.RUNNING) as { id: string; room: number }[];
    return new Map(rows.map((r) => [r.id, Math.max(0, r.room)]));
  }

  /** Sets how many dependencies a queued task waits for. */
  setWaiting(id: string, waiting: number): void {
    this.sql("UPDATE tasks SET waiting = ? WHERE id = ?").run(waiting, id);
  }

  /** Tasks in the given states, in submit order. */
  inStates(states: TaskState[]): Task[] {
    const marks = states.map(() => "?").join(",");
    return this.sql(`SELECT * FROM tasks WHERE state IN (${marks}) ORDER BY seq`)
      .all(...states)
      .map((r) => toTask(r as unknown as TaskRow));
  }

  /**
   * A page of tasks, newest first, in `states` (all when empty), of `filter.groupId` and
   * holding every one of `filter.labels`; the cursor is the last row's sequence number. A page
   * filtered by labels looks at no more than LABEL_SCAN_ROWS tasks: it may then hold fewer
   * than `pageSize` with `next` set.
   */
  list(
    states: TaskState[],
    pageSize: number,
    before: number | undefined,
    filter: { groupId?: string; labels?: Record<string, string> } = {},
  ): { tasks: Task[]; seqs: number[]; next?: number } {
    const where: string[] = [];
    const args: (number | string)[] = [];
    if (filter.groupId) {
      where.push("group_id = ?");
      args.push(filter.groupId);
    }
    if (states.length > 0) {
      where.push(`state IN (${states.map(() => "?").join(",")})`);
      args.push(...states);
    }
    if (before !== undefined) {
      where.push("seq < ?");
      args.push(before);
    }
    const wanted = Object.entries(filter.labels ?? {});
    const scan = wanted.length > 0 ? LABEL_SCAN_ROWS : pageSize + 1;
    // Only the chosen rows' seqs are sorted (several states, a group: no index gives their
    // order); then those rows are read one at a time. Sorting whole rows held them all at once
    // (up to LABEL_SCAN_ROWS of them, prompts included) in SQLite's sorter.
    const chosen = `SELECT seq FROM tasks ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY seq DESC LIMIT ?`;
    const sql = `SELECT * FROM tasks WHERE seq IN (${chosen}) ORDER BY seq DESC`;
    const tasks: Task[] = [];
    const seqs: number[] = [];
    let lastSeen: number | undefined;
    let seen = 0;
    for (const r of this.sql(sql).iterate(...args, scan)) {
      const row = r as unknown as TaskRow;
      seen++;
      if (tasks.length === pageSize) return { tasks, seqs, next: seqs[seqs.length - 1]! };
      lastSeen = row.seq;
      const task = toTask(row);
      if (wanted.some(([k, v]) => task.spec?.labels[k] !== v)) continue;
      tasks.push(task);
      seqs.push(row.seq);
    }
    // Stopped by the scan bound (labels) with rows left: go on after the last one looked at.
    const cut = wanted.length > 0 && seen === scan && lastSeen !== undefined;
    return { tasks, seqs, ...(cut ? { next: lastSeen } : {}) };
  }

  /**
   * Appends events to a task's log, in one transaction (joining the caller's, if any), and
   * returns them with their sequence numbers. Output beyond the retention limit pushes the
   * task's oldest output out; the newest event is always kept, so sequence numbers only grow.
   */
  appendEvents(taskId: string, kinds: TaskEvent["kind"][], now: number): TaskEvent[] {
    return this.tx(() => {
      const row = this.sql("SELECT MAX(seq) AS s FROM events WHERE task_id = ?").get(taskId) as {
        s: number | null;
      };
      let seq = row.s ?? 0;
      const insert = this.sql(
        "INSERT INTO events (task_id, seq, body, output_bytes) VALUES (?, ?, ?, ?)",
      );
      return kinds.map((kind) => {
        seq++;
        const event = create(TaskEventSchema, {
          taskId,
          seq: BigInt(seq),
          time: timestampFromMs(now),
          kind,
        });
        const body = toBinary(TaskEventSchema, event);
        const output = kind.case === "output" ? body.byteLength : 0;
        insert.run(taskId, seq, body, output);
        if (output > 0) this.retainOutput(taskId, seq, output);
        return event;
      });
    });
  }

  /** Appends one event (see appendEvents). */
  appendEvent(taskId: string, kind: TaskEvent["kind"], now: number): TaskEvent {
    return this.appendEvents(taskId, [kind], now)[0]!;
  }

  /** Counts an output event just stored and deletes the oldest output beyond the retention. */
  private retainOutput(taskId: string, newest: number, bytes: number): void {
    let total = this.outputBytes.get(taskId);
    if (total === undefined) {
      const row = this.sql(
        "SELECT COALESCE(SUM(output_bytes), 0) AS b FROM events WHERE task_id = ?",
      ).get(taskId) as { b: number };
      total = row.b; // includes the event just inserted
    } else {
      total += bytes;
    }
    if (total > this.retentionBytes) {
      let last = 0;
      const oldest = this.sql(
        "SELECT seq, output_bytes FROM events WHERE task_id = ? AND output_bytes > 0 AND seq < ? ORDER BY seq",
      );
      for (const r of oldest.iterate(taskId, newest)) {
        const { seq, output_bytes } = r as { seq: number; output_bytes: number };
        last = seq;
        total -= output_bytes;
        if (total <= this.retentionBytes) break;
      }
      if (last > 0)
        this.db
          .prepare("DELETE FROM events WHERE task_id = ? AND output_bytes > 0 AND seq <= ?")
          .run(taskId, last);
    }
    this.outputBytes.set(taskId, total);
  }

  /**
   * A page of a task's events after `afterSeq`, in order, within `limits` (at least one event
   * when there is one): what a reader holds at a time, however long the history.
   */
  eventPage(taskId: string, afterSeq: bigint, limits: PageLimits): TaskEvent[] {
    const rows = this.sql(
      "SELECT body FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
    ).iterate(taskId, afterSeq, limits.maxEvents);
    const page: TaskEvent[] = [];
    let bytes = 0;
    for (const r of rows) {
      const body = (r as { body: Uint8Array }).body;
      page.push(fromBinary(TaskEventSchema, body));
      bytes += body.byteLength;
      if (bytes >= limits.maxBytes) break;
    }
    return page;
  }

  /**
   * The newest events before `beforeSeq` (0: the newest of all), in order, within `limits`
   * (at least one when there is one), and whether older ones remain.
   */
  eventPageBefore(
    taskId: string,
    beforeSeq: bigint,
    limits: PageLimits,
  ): { events: TaskEvent[]; more: boolean } {
    const rows = this.sql(
      "SELECT body FROM events WHERE task_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
    ).iterate(
      taskId,
      beforeSeq > 0n ? beforeSeq : BigInt(Number.MAX_SAFE_INTEGER),
      limits.maxEvents + 1,
    );
    const page: TaskEvent[] = [];
    let bytes = 0;
    let more = false;
    for (const r of rows) {
      const body = (r as { body: Uint8Array }).body;
      if (
        page.length === limits.maxEvents ||
        (page.length > 0 && bytes + body.byteLength > limits.maxBytes)
      ) {
        more = true;
        break;
      }
      page.push(fromBinary(TaskEventSchema, body));
      bytes += body.byteLength;
    }
    return { events: page.reverse(), more };
  }

  /** A task's events after `afterSeq`, in order (all of them: for tests and small logs). */
  events(taskId: string, afterSeq = 0): TaskEvent[] {
    return this.sql("SELECT body FROM events WHERE task_id = ? AND seq > ? ORDER BY seq")
      .all(taskId, afterSeq)
      .map((r) => fromBinary(TaskEventSchema, (r as { body: Uint8Array }).body));
  }

  /** A task's state, without decoding it; undefined for an unknown task. */
  state(id: string): TaskState | undefined {
    const row = this.sql("SELECT state FROM tasks WHERE id = ?").get(id) as
      { state: number } | undefined;
    return row?.state;
  }

  /** Forgets what is cached of a task whose attempt let go (memory stays bounded). */
  forgetEvents(taskId: string): void {
    this.outputBytes.delete(taskId);
  }

  /** Counts by state, run-time percentiles (RUN_HISTOGRAM) and token/cost totals. */
  stats(): {
    byState: Map<TaskState, number>;
    runMs: { p50: number; p95: number; p99: number };
    inputTokens: number;
    outputTokens: number;
    costUsd: number;
  } {
    const byState = this.countByState();
    const totals = this.sql(
      `SELECT MIN(input_tokens, ${MAX_SAFE}) AS i, MIN(output_tokens, ${MAX_SAFE}) AS o,
         cost_usd AS c FROM task_totals`,
    ).get() as { i: number; o: number; c: number };
    const buckets = this.sql(
      "SELECT bucket, n FROM run_ms_buckets WHERE n > 0 ORDER BY bucket",
    ).all() as { bucket: number; n: number }[];
    const count = buckets.reduce((sum, b) => sum + b.n, 0);
    const end = (order: "ASC" | "DESC") =>
      count === 0
        ? 0
        : ((
            this.sql(
              `SELECT run_ms FROM tasks WHERE run_ms IS NOT NULL ORDER BY run_ms ${order} LIMIT 1`,
            ).get() as { run_ms: number } | undefined
          )?.run_ms ?? 0); // none: a histogram changed by hand
    const [shortest, longest] = [end("ASC"), end("DESC")];
    // The upper bound of the bucket that holds the p-th percentile's run, within the shortest
    // and longest runs (so one run, or runs all alike, give their duration exactly).
    const pct = (p: number) => {
      if (count === 0) return 0;
      const rank = Math.max(1, Math.ceil((p / 100) * count));
      let seen = 0;
      const b = buckets.find((row) => (seen += row.n) >= rank)!;
      const upper = Math.round(2 ** (b.bucket / RUN_BUCKETS_PER_DOUBLING));
      // Not below 0: runs stored by versions that timed them by the wall clock, set back meanwhile.
      return Math.max(0, Math.min(longest, Math.max(shortest, upper)));
    };
    return {
      byState,
      runMs: { p50: pct(50), p95: pct(95), p99: pct(99) },
      inputTokens: totals.i,
      outputTokens: totals.o,
      costUsd: totals.c,
    };
  }

  /**
   * Runs fn in one transaction, after the writes already waiting for a group commit; inside
   * another, fn joins it (all commits or nothing does).
   * A failure rolls everything back; a full disk throws StorageFull naming the data folder.
   */
  tx<T>(fn: () => T): T {
    if (this.db.isTransaction) return fn();
    // Writes are stored in the order they were asked for, batched (commit) or not.
    this.batches.flush();
    try {
      this.db.exec("BEGIN IMMEDIATE");
      const out = fn();
      this.db.exec("COMMIT");
      return out;
    } catch (e) {
      // SQLite may have rolled back already (SQLITE_FULL during COMMIT does).
      if (this.db.isTransaction) this.db.exec("ROLLBACK");
      this.outputBytes.clear(); // counts may include rolled-back rows: recount on next use
      throw isDiskFull(e) ? new StorageFull(this.dataDir, e) : e;
    }
  }

  close(): void {
    this.batches.flush();
    this.statements.clear();
    this.db.close();
  }
}

/** A group's stored row. */
export interface GroupRow {
  seq: number;
  id: string;
  spec: TaskGroupSpec;
  createTime: number;
  maxParallel: number;
  failFast: boolean;
  reduceTaskId: string;
  cancelled: boolean;
  reason: string;
  endTime: number | undefined;
}

/**
 * A group's columns but its spec (every member's, up to 32 MiB): read on each of its members'
 * changes, the spec is fetched only when asked for (RawGroupRow → GroupRow.spec).
 */
const GROUP_COLUMNS =
  "seq, id, create_time, max_parallel, fail_fast, reduce_task_id, cancelled, reason, end_time";

interface RawGroupRow {
  seq: number;
  id: string;
  create_time: number;
  max_parallel: number;
  fail_fast: number;
  reduce_task_id: string;
  cancelled: number;
  reason: string;
  end_time: number | null;
}

/** A group's tasks summed (TaskStore.groupTotals). */
export interface GroupTotals {
  byState: Map<TaskState, number>;
  count: number;
  inputTokens: number;
  outputTokens: number;
  costUsd: number;
  runMs: number;
  /** The latest end time of its tasks (0 when none ended). */
  lastEnd: number;
}

/** The WHERE clause of spend records after a time (the first argument) for a set of labels. */
function spendFilter(labels: Record<string, string>): { where: string; args: string[] } {
  const entries = Object.entries(labels);
  const has = "EXISTS (SELECT 1 FROM json_each(spend.labels) WHERE key = ? AND value = ?)";
  return {
    where: ["at > ?", ...entries.map(() => has)].join(" AND "),
    args: entries.flat(),
  };
}

function toTask(row: TaskRow): Task {
  return create(TaskSchema, {
    id: row.id,
    state: row.state,
    spec: fromBinary(TaskSpecSchema, row.spec),
    agentId: row.agent_id,
    attempts: row.attempts,
    createTime: timestampFromMs(row.create_time),
    ...(row.start_time !== null ? { startTime: timestampFromMs(row.start_time) } : {}),
    ...(row.end_time !== null ? { endTime: timestampFromMs(row.end_time) } : {}),
    ...(row.result ? { result: fromBinary(TaskResultSchema, row.result) } : {}),
    groupId: row.group_id,
    member: row.member,
  });
}
