import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { TaskGroupSpecSchema } from "../../gen/conductor/v1/group_pb.js";
import {
  AgentOutputSchema,
  TaskResultSchema,
  TaskSpecSchema,
  TaskState,
} from "../../gen/conductor/v1/task_pb.js";
import { TaskStore } from "./store.ts";

/** The tasks table as the first release wrote it (no trace_parent, no host). */
const FIRST_SCHEMA = `
CREATE TABLE tasks (
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
  cost_usd REAL NOT NULL DEFAULT 0
);`;

describe("TaskStore", () => {
  const dirs: string[] = [];
  const tempDir = () => {
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-store-"));
    dirs.push(dir);
    return dir;
  };
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it("adds the attempt's host to a database from before it was recorded", () => {
    const dir = tempDir();
    const db = new DatabaseSync(path.join(dir, "orchestrator.db"));
    db.exec(FIRST_SCHEMA);
    const spec = toBinary(TaskSpecSchema, create(TaskSpecSchema, { prompt: "old work" }));
    db.prepare(
      `INSERT INTO tasks (id, state, priority, type, spec, agent_id, attempts, max_attempts, create_time)
       VALUES ('old', ?, 0, 'generic', ?, 'agent-1', 1, 2, 1)`,
    ).run(TaskState.RUNNING, spec);
    db.close();

    const store = new TaskStore(dir);
    try {
      expect(store.get("old")?.state).toBe(TaskState.RUNNING);
      expect(store.attemptHost("old")).toBe("");
      expect(store.meta("old")?.traceParent).toBe("");
      expect(store.transition("old", [TaskState.RUNNING], { host: "/run/agent-host.sock" })).toBe(
        true,
      );
      expect(store.attemptHost("old")).toBe("/run/agent-host.sock");
      // The counts GetStats reads are made from the tasks already there.
      expect(store.countByState()).toEqual(new Map([[TaskState.RUNNING, 1]]));
    } finally {
      store.close();
    }
    // Opening it again finds the columns there and changes nothing.
    const again = new TaskStore(dir);
    try {
      expect(again.attemptHost("old")).toBe("/run/agent-host.sock");
    } finally {
      again.close();
    }
  });

  it("answers every query the scheduler and the API run by index: none reads every task", async () => {
    const store = new TaskStore(tempDir());
    try {
      const spec = (
        over: { priority?: number; dependsOn?: string[]; idempotencyKey?: string } = {},
      ) => create(TaskSpecSchema, { prompt: "work", ...over });
      const groupSpec = create(TaskGroupSpecSchema, { name: "g", maxParallel: 2 });
      // Enough rows that SQLite's planner sees a real table (it may scan a tiny one).
      store.tx(() => {
        store.insertGroup({ id: "g", spec: groupSpec, now: 1, reduceTaskId: "r" });
        for (let i = 0; i < 2000; i++)
          store.insert(`t${i}`, spec({ priority: i % 3 }), 3, i, "", {
            groupId: i % 10 === 0 ? "g" : "",
            member: i % 10 === 0 ? `m${i}` : "",
          });
        store.insert("dep", spec({ dependsOn: ["t1"] }), 3, 1);
        store.insert("r", spec(), 1, 1, "", { groupId: "g", member: "reduce", after: ["t0"] });
      });
      await store.commit(() => store.insert("late", spec({ idempotencyKey: "k" }), 1, 5));
      store.insert("again", spec({ idempotencyKey: "k" }), 1, 5);
      // What the scheduler does each time it runs, and what a task's attempt stores.
      store.groupRoom();
      store.nextQueued(40, 10, ["g"]);
      store.nextQueued(40, 10);
      store.nextWakeup(10);
      store.transition("t1", [TaskState.QUEUED], { state: TaskState.SCHEDULED, attempts: 1 });
      store.transition("t1", [TaskState.SCHEDULED], { state: TaskState.RUNNING, startTime: 2 });
      store.appendEvent(
        "t1",
        { case: "output", value: create(AgentOutputSchema, { text: "x" }) },
        3,
      );
      const result = create(TaskResultSchema, { text: "ok", costUsd: 0.5 });
      store.transition(
        "t1",
        [TaskState.RUNNING],
        { state: TaskState.SUCCEEDED, result, runMs: 7 },
        4,
      );
      store.dependencySucceeded(store.queuedDependents("t1").map((d) => d.id));
      store.waitingTasks();
      store.waitingTasks("dep");
      store.queueInfo("dep");
      store.maxAttempts("t1");
      store.attemptHost("t1");
      store.meta("t1");
      store.groupOf("t0");
      store.windowSpend({}, 0);
      store.spendReleasedBy({}, 0, 0.1);
      // What the API reads: GetStats, the gauges, ListTasks by state, a task's events, a group.
      store.stats();
      store.queuedByPriority();
      store.list([TaskState.QUEUED], 100, undefined);
      store.list([TaskState.QUEUED], 100, 1500);
      store.list([], 100, undefined, { groupId: "g" });
      store.list([TaskState.QUEUED], 100, undefined, { groupId: "g", labels: { team: "a" } });
      store.list([TaskState.QUEUED], 100, 1500, { labels: { team: "a" } });
      const several = store.list([TaskState.QUEUED, TaskState.SUCCEEDED], 100, undefined, {
        labels: { team: "a" },
      });
      expect(several.seqs).toEqual([...several.seqs].sort((a, b) => b - a)); // newest first
      store.eventPage("t1", 0n, { maxEvents: 10, maxBytes: 1024 });
      store.eventPageBefore("t1", 0n, { maxEvents: 10, maxBytes: 1024 });
      store.eventPageBefore("t1", 5n, { maxEvents: 10, maxBytes: 1024 });
      store.groupTotals("g");
      store.groupTaskIds("g", [TaskState.QUEUED]);
      store.groupHosts("g");
      store.inStates([TaskState.SCHEDULED, TaskState.RUNNING]);

      // A whole-table read of tasks, events or dependencies grows with the queue. Allowed: the
      // newest-first page walk of all tasks (it stops after one page), small tables.
      const allowed = [/^SELECT seq FROM tasks\s+ORDER BY seq DESC LIMIT \?$/];
      const plans = store.queryPlans();
      expect(plans.size).toBeGreaterThan(30);
      const scans = [...plans]
        .filter(([sql]) => !allowed.some((re) => re.test(sql.trim())))
        .filter(
          ([, plan]) =>
            /SCAN (tasks|events|task_deps|t|w|d)\b(?! USING INTEGER PRIMARY KEY)/.test(plan) ||
            /SCAN (tasks|t|w) USING (COVERING )?INDEX/.test(plan),
        )
        .map(([sql, plan]) => `${sql.replace(/\s+/g, " ")}\n    => ${plan}`);
      expect(scans).toEqual([]);
      // A page where no index gives the order (several states) sorts only seqs, never whole
      // rows: SQLite's sorter would hold up to LABEL_SCAN_ROWS of them, prompts and all.
      // (inStates reads every active task, as many as there are agents: no LIMIT.)
      const sortsRows = [...plans].filter(
        ([sql, plan]) =>
          /TEMP B-TREE/.test(plan) && /LIMIT/.test(sql) && !/seq IN \(SELECT seq /.test(sql),
      );
      expect(sortsRows).toEqual([]);
      // The queries the queue depends on use the indexes made for them.
      const planOf = (fragment: string) =>
        [...plans].find(([sql]) => sql.includes(fragment))?.[1] ?? "(not run)";
      expect(planOf("MIN(not_before)")).toMatch(/tasks_backoff/);
      const next = planOf("ORDER BY priority DESC, seq ASC");
      expect(next).toMatch(/tasks_ready \(state=\? AND waiting=\?\)/);
      expect(next).not.toMatch(/TEMP B-TREE/); // walks the index in order, stops at the limit
      expect(planOf("WHERE group_id = ? AND state IN")).toMatch(/tasks_by_group/);
      expect(planOf("FROM task_counts")).not.toMatch(/\btasks\b/);
    } finally {
      store.close();
    }
  });

  it("keeps the counts GetStats reads equal to the tasks' own, across changes and a reopen", async () => {
    const dir = tempDir();
    const store = new TaskStore(dir);
    const spec = create(TaskSpecSchema, { prompt: "work" });
    for (let i = 0; i < 5; i++) await store.commit(() => store.insert(`t${i}`, spec, 1, i));
    const result = create(TaskResultSchema, {
      text: "ok",
      costUsd: 0.25,
      usage: { inputTokens: 10n, outputTokens: 3n },
    });
    store.transition("t0", [TaskState.QUEUED], { state: TaskState.RUNNING });
    store.transition("t0", [TaskState.RUNNING], { state: TaskState.SUCCEEDED, result });
    store.transition("t1", [TaskState.QUEUED], { state: TaskState.CANCELLED });
    // A write that fails takes its counts with it.
    await expect(
      store.commit(() => {
        store.insert("t9", spec, 1, 9);
        throw new Error("refused");
      }),
    ).rejects.toThrow("refused");
    const expected = new Map([
      [TaskState.QUEUED, 3],
      [TaskState.SUCCEEDED, 1],
      [TaskState.CANCELLED, 1],
    ]);
    expect(store.countByState()).toEqual(expected);
    expect(store.queuedByPriority()).toEqual(new Map([[0, 3]]));
    const stats = store.stats();
    expect([stats.inputTokens, stats.outputTokens, stats.costUsd]).toEqual([10, 3, 0.25]);
    // Counts no number holds (an upstream's word, added up over attempts) are kept at 2^40 a
    // task: the task and the totals stay readable.
    const huge = create(TaskResultSchema, { usage: { inputTokens: 2n ** 60n, outputTokens: 1n } });
    for (const id of ["t2", "t3"]) {
      store.transition(id, [TaskState.QUEUED], { state: TaskState.RUNNING });
      store.transition(id, [TaskState.RUNNING], { state: TaskState.FAILED, result: huge });
    }
    expect(store.get("t2")!.result!.usage!.inputTokens).toBe(2n ** 60n);
    expect(store.stats().inputTokens).toBe(10 + 2 * 2 ** 40);
    expect(store.list([TaskState.FAILED], 10, undefined).tasks).toHaveLength(2);
    store.transition("t2", [TaskState.FAILED], { state: TaskState.QUEUED, result });
    store.transition("t3", [TaskState.FAILED], { state: TaskState.QUEUED, result });
    expect(store.stats().inputTokens).toBe(30);
    store.close();
    const again = new TaskStore(dir);
    try {
      expect(again.countByState()).toEqual(expected);
    } finally {
      again.close();
    }
  });

  describe("GetStats' run-time percentiles", () => {
    /** The exact p-th percentile of `ms` (the run at rank ceil(p% of n)), as the store ranks. */
    const exact = (ms: number[], p: number) => {
      const sorted = [...ms].sort((a, b) => a - b);
      return sorted[Math.max(1, Math.ceil((p / 100) * sorted.length)) - 1]!;
    };
    const within = (got: { p50: number; p95: number; p99: number }, ms: number[]) => {
      for (const [p, value] of [
        [50, got.p50],
        [95, got.p95],
        [99, got.p99],
      ] as const) {
        const want = exact(ms, p);
        expect(value, `p${p}`).toBeGreaterThanOrEqual(want);
        expect(value, `p${p}`).toBeLessThanOrEqual(Math.ceil(want * 1.045));
      }
    };

    it("are within 4.5% above the exact ones, exact for one run, across a reopen, deletes and an older database", async () => {
      const dir = tempDir();
      const store = new TaskStore(dir);
      const spec = create(TaskSpecSchema, { prompt: "work" });
      expect(store.stats().runMs).toEqual({ p50: 0, p95: 0, p99: 0 });
      await store.commit(() => store.insert("only", spec, 1, 0));
      store.transition("only", [TaskState.QUEUED], { state: TaskState.SUCCEEDED, runMs: 1234 });
      expect(store.stats().runMs).toEqual({ p50: 1234, p95: 1234, p99: 1234 });
      // Skewed durations, from 0 ms to hours, some alike.
      const ms = [1234];
      await store.commit(() => {
        for (let i = 0; i < 2_000; i++) {
          const runMs = i % 7 === 0 ? 90_000 : Math.floor(1.0041 ** i * (i % 3)) + (i % 5);
          store.insert(`t${i}`, spec, 1, i);
          store.transition(`t${i}`, [TaskState.QUEUED], { state: TaskState.FAILED, runMs });
          ms.push(runMs);
        }
      });
      within(store.stats().runMs, ms);
      store.close();

      // Tasks deleted by hand, then the histogram dropped as a database from before it had one.
      const raw = (sql: string) => {
        const db = new DatabaseSync(path.join(dir, "orchestrator.db"));
        try {
          db.exec(sql);
          return (db.prepare("SELECT run_ms FROM tasks").all() as { run_ms: number }[]).map(
            (r) => r.run_ms,
          );
        } finally {
          db.close();
        }
      };
      const reopened = (left: number[]) => {
        const again = new TaskStore(dir);
        try {
          within(again.stats().runMs, left);
        } finally {
          again.close();
        }
      };
      const left = raw("DELETE FROM tasks WHERE id GLOB 't1*'");
      expect(left.length).toBeLessThan(ms.length);
      reopened(left);
      raw(
        "DROP TABLE run_ms_buckets; DROP TRIGGER tasks_run_ms_insert; " +
          "DROP TRIGGER tasks_run_ms_delete; DROP TRIGGER tasks_run_ms_update",
      );
      reopened(left);
      // Only some of it there (the table dropped by hand, its triggers left): made whole.
      raw("DROP TABLE run_ms_buckets");
      reopened(left);
      // Runs a version timed by the wall clock, set back during them: never a negative figure.
      raw("UPDATE tasks SET run_ms = -run_ms - 1");
      const again = new TaskStore(dir);
      try {
        expect(again.stats().runMs).toEqual({ p50: 0, p95: 0, p99: 0 });
      } finally {
        again.close();
      }
    });
  });
});
