import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import {
  AgentOutputSchema,
  StateChangeSchema,
  TaskResultSchema,
  TaskSpecSchema,
  TaskState,
} from "../../gen/conductor/v1/task_pb.js";
import { startService } from "../../test/harness.ts";
import {
  FakeAgentHost,
  started,
  until,
  Watch,
  World,
  type Play,
} from "../../test/orchestrator-world.ts";
import { memoryOf, stalledWatch, writeHistory, type StalledWatch } from "../../test/watch-load.ts";
import { unixTransport } from "../shared/transport.ts";
import { TaskEvents } from "./events.ts";
import { TaskStore } from "./store.ts";

const output = (text: string) => ({
  case: "output" as const,
  value: create(AgentOutputSchema, { type: "assistant", text }),
});

describe("task events", () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  const tempDir = () => {
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-watch-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  };
  afterEach(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn();
  });

  it("stores a state change only with its events: when an event cannot be stored, nothing is", async () => {
    const dir = tempDir();
    new TaskStore(dir).close(); // makes the schema
    const db = new DatabaseSync(path.join(dir, "orchestrator.db"));
    // A real write failure at the event insert (as a crash or a full disk would cause).
    db.exec(`CREATE TRIGGER refuse_events BEFORE INSERT ON events WHEN NEW.task_id = 'doomed'
      BEGIN SELECT RAISE(ABORT, 'refused'); END;`);
    db.close();
    const store = new TaskStore(dir);
    cleanups.push(() => store.close());
    const events = new TaskEvents(store, undefined);
    const spec = create(TaskSpecSchema, { prompt: "work" });

    // A submit whose first event is refused stores no task.
    const queued = { state: TaskState.QUEUED, reason: "submitted" };
    await expect(
      events.submitted(() => store.insert("doomed", spec, 1, 1), queued, 1),
    ).rejects.toThrow(/refused/);
    expect(store.get("doomed")).toBeUndefined();

    // A final transition whose events are refused leaves the task as it was, without a result.
    store.insert("doomed", spec, 1, 1);
    store.transition("doomed", [TaskState.QUEUED], { state: TaskState.RUNNING, attempts: 1 });
    const result = create(TaskResultSchema, { text: "all done" });
    const change = { state: TaskState.SUCCEEDED, attempt: 1 };
    expect(() =>
      events.transition("doomed", [TaskState.RUNNING], { result, endTime: 2 }, change, 2, [
        { case: "result", value: result },
      ]),
    ).toThrow(/refused/);
    const task = store.get("doomed")!;
    expect(task.state).toBe(TaskState.RUNNING);
    expect(task.result).toBeUndefined();
    expect(task.endTime).toBeUndefined();
    expect(store.events("doomed")).toEqual([]);

    // Another task's transition and events are stored together.
    await events.submitted(() => store.insert("fine", spec, 1, 1), queued, 1);
    expect(
      events.transition("fine", [TaskState.QUEUED], {}, { state: TaskState.CANCELLED }, 2),
    ).toBe(true);
    expect(store.get("fine")?.state).toBe(TaskState.CANCELLED);
    expect(
      store.events("fine").map((e) => e.kind.case === "stateChange" && e.kind.value.state),
    ).toEqual([TaskState.QUEUED, TaskState.CANCELLED]);
  });

  it("ends a watch of a task stored as ended without its final event (an older version's crash)", async () => {
    const world = new World();
    cleanups.push(() => world[Symbol.asyncDispose]());
    const dataDir = path.join(world.dir, "data");
    const store = new TaskStore(dataDir);
    const spec = create(TaskSpecSchema, { prompt: "work" });
    store.insert("torn", spec, 1, 1_000);
    store.appendEvent(
      "torn",
      { case: "stateChange", value: create(StateChangeSchema, { state: TaskState.QUEUED }) },
      1_000,
    );
    store.appendEvent("torn", output("the work is done"), 2_000);
    // What an older version left after a crash between its two commits: the row, no event.
    const result = create(TaskResultSchema, { text: "done" });
    store.transition("torn", [TaskState.QUEUED], {
      state: TaskState.SUCCEEDED,
      agentId: "agent-1",
      attempts: 1,
      endTime: 3_000,
      result,
    });
    store.close();

    await world.startOrchestrator();
    const watch = new Watch(world.client, "torn");
    await watch.ended();
    expect(watch.events.map((e) => e.seq)).toEqual([1n, 2n, 3n]);
    const last = watch.changes().at(-1)!;
    expect(last).toMatchObject({ state: TaskState.SUCCEEDED, agentId: "agent-1", attempt: 1 });
    expect(last.at).toBe(3_000);
  });

  it("streams a long history in pages, then a flood of live events, in order and without gaps", async () => {
    const world = new World();
    cleanups.push(() => world[Symbol.asyncDispose]());
    const store = new TaskStore(path.join(world.dir, "data"));
    store.insert("long", create(TaskSpecSchema, { prompt: "work" }), 1, 1);
    const HISTORY = 700; // several pages (WATCH_PAGE.maxEvents is 256)
    for (let i = 0; i < HISTORY; i++) store.appendEvent("long", output(`stored ${i}`), 1);
    store.close();

    const LIVE = 300;
    const flood: Play = async function* (req, _ctx, host) {
      yield started(req, host);
      for (let i = 0; i < LIVE; i++)
        yield { kind: { case: "output", value: { type: "assistant", text: `live ${i}` } } };
      host.setAgent("");
      yield { kind: { case: "outcome", value: { state: TaskState.SUCCEEDED, result: {} } } };
    };
    await world.startOrchestrator();
    const watch = new Watch(world.client, "long");
    await until(() => watch.events.length === HISTORY, "the stored history");
    await world.host(world.hostSocket, new FakeAgentHost("", [flood]));
    await watch.ended();

    const seqs = watch.events.map((e) => Number(e.seq));
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));
    const texts = watch.events.flatMap((e) =>
      e.kind.case === "output" ? [e.kind.value.text] : [],
    );
    expect(texts).toEqual([
      ...Array.from({ length: HISTORY }, (_, i) => `stored ${i}`),
      ...Array.from({ length: LIVE }, (_, i) => `live ${i}`),
    ]);
    expect(watch.changes().map((c) => c.state)).toEqual([
      TaskState.SCHEDULED,
      TaskState.RUNNING,
      TaskState.SUCCEEDED,
    ]);
  });

  it("keeps at most the retention of a task's output: the oldest goes, state changes and the result stay", async () => {
    const dir = tempDir();
    const KiB = 1024;
    const store = new TaskStore(dir, { outputRetentionBytes: 100 * KiB });
    cleanups.push(() => store.close());
    const events = new TaskEvents(store, undefined);
    const spec = create(TaskSpecSchema, { prompt: "print" });
    await events.submitted(
      () => store.insert("chatty", spec, 1, 1),
      { state: TaskState.QUEUED },
      1,
    );
    for (let i = 0; i < 30; i++) events.append("chatty", output(`${i} ${"z".repeat(10 * KiB)}`), 2);
    const result = create(TaskResultSchema, { text: "said a lot" });
    events.transition("chatty", [TaskState.QUEUED], { result }, { state: TaskState.SUCCEEDED }, 3, [
      { case: "result", value: result },
    ]);

    const kept = store.events("chatty");
    const outputs = kept.flatMap((e) => (e.kind.case === "output" ? [e.kind.value.text] : []));
    expect(outputs.length).toBeGreaterThanOrEqual(8);
    expect(outputs.length).toBeLessThanOrEqual(10);
    expect(outputs.at(-1)).toMatch(/^29 /); // the newest are kept
    expect(outputs.map((t) => Number(t.split(" ")[0]))).toEqual(
      Array.from({ length: outputs.length }, (_, i) => 30 - outputs.length + i),
    );
    expect(kept[0]?.kind.case).toBe("stateChange");
    expect(kept.map((e) => e.kind.case).slice(-2)).toEqual(["result", "stateChange"]);
    expect(kept.map((e) => Number(e.seq)).at(-1)).toBe(33); // sequence numbers never go back
  });

  it("keeps one page per stream: 20 WatchTask streams that never read stay within a bound", async () => {
    const dir = tempDir();
    const dataDir = path.join(dir, "data");
    const socketDir = path.join(dir, "run");
    const MiB = 1024 ** 2;
    // 30 MiB of history: each stream holding it all (as before) would add over 600 MiB.
    const id = writeHistory(dataDir, 30, MiB, 64 * MiB);
    const proc = await startService(
      "orchestrator",
      ["--data-dir", dataDir, "--socket-dir", socketDir],
      {
        CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1",
        CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
        CONDUCTOR_ORCHESTRATOR_AGENT_HOSTS: path.join(dir, "no-agent-host.sock"),
      },
    );
    cleanups.push(() => proc.stop());
    const socket = path.join(socketDir, "orchestrator.sock");
    const client = createClient(OrchestratorService, unixTransport(socket));
    await client.getTask({ id });
    const before = memoryOf(proc.proc.pid!);
    const streams: StalledWatch[] = [];
    cleanups.push(() => streams.forEach((s) => s.close()));
    for (let i = 0; i < 20; i++) streams.push(await stalledWatch(socket, id));
    const after = memoryOf(proc.proc.pid!);
    // Measured about 90 MiB (bench/watch-memory.ts); generous against a noisy machine.
    expect(after.peakMiB - before.rssMiB).toBeLessThan(300);

    // A reader that reads gets the whole history meanwhile.
    let bytes = 0;
    for await (const { event } of client.watchTask({ id }, { signal: AbortSignal.timeout(30_000) }))
      if (event?.kind.case === "output") bytes += event.kind.value.text.length;
    expect(bytes).toBe(30 * MiB);
  });
});
