import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { TaskSpecSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
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

  it("finds a group's tasks by index, however many other tasks the store holds", () => {
    const dir = tempDir();
    new TaskStore(dir).close();
    const db = new DatabaseSync(path.join(dir, "orchestrator.db"));
    try {
      // A partial index (WHERE group_id != '') is never used for `group_id = ?`: a cancel of a
      // 300-member group scanned every task once per member.
      const plan = (sql: string) =>
        (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all("g") as { detail: string }[])
          .map((r) => r.detail)
          .join("; ");
      expect(plan("SELECT id FROM tasks WHERE group_id = ? AND state IN (1, 2)")).toMatch(
        /USING INDEX tasks_by_group \(group_id=\? AND state=\?\)/,
      );
      expect(plan("SELECT state, COUNT(*) FROM tasks WHERE group_id = ? GROUP BY state")).toMatch(
        /USING COVERING INDEX tasks_by_group/,
      );
    } finally {
      db.close();
    }
  });
});
