import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { TaskResultSchema, TaskSpecSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { FakeAgentHost, started, until, World, type Play } from "../../test/orchestrator-world.ts";
import { heldReason, SpendLimits, type SpendLimit } from "./spend-limits.ts";
import { TaskStore } from "./store.ts";

const HOUR = 3_600_000;
const T0 = Date.UTC(2026, 10, 30, 12, 0, 0);

describe("spend limits", () => {
  const dirs: string[] = [];
  const stores: TaskStore[] = [];
  const open = (dir = mkdtempSync(path.join(tmpdir(), "conductor-spend-"))) => {
    if (!dirs.includes(dir)) dirs.push(dir);
    const store = new TaskStore(dir);
    stores.push(store);
    return { store, dir };
  };
  afterEach(() => {
    for (const s of stores.splice(0)) s.close();
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  /** A task with these labels that ran and cost `usd` in all at `at` (then more attempts). */
  const spent = (
    store: TaskStore,
    id: string,
    labels: Record<string, string>,
    costs: [at: number, cumulativeUsd: number][],
  ) => {
    store.insert(id, create(TaskSpecSchema, { prompt: "p", labels }), 3, T0 - HOUR);
    for (const [at, usd] of costs) {
      store.transition(id, [TaskState.QUEUED], { state: TaskState.RUNNING });
      const result = create(TaskResultSchema, { costUsd: usd });
      store.transition(id, [TaskState.RUNNING], { state: TaskState.QUEUED, result }, at);
    }
  };

  it("records what each attempt added to its task's cost, and sums the window per labels", () => {
    const { store } = open();
    // Attempt 1 costs 0.02, attempt 2 another 0.03 (the result says 0.05 in all).
    spent(store, "a", { team: "a", tier: "x" }, [
      [T0, 0.02],
      [T0 + 1000, 0.05],
    ]);
    spent(store, "b", { team: "b" }, [[T0 + 2000, 0.1]]);
    // A result that costs no more than the last (an interrupted attempt's) records nothing.
    spent(store, "c", { team: "a" }, [[T0 + 3000, 0]]);
    const now = T0 + 5000;
    expect(store.windowSpend({}, now - HOUR).usd).toBeCloseTo(0.15, 12);
    expect(store.windowSpend({ team: "a" }, now - HOUR)).toEqual({
      usd: expect.closeTo(0.05, 12) as number,
      oldest: T0,
    });
    expect(store.windowSpend({ team: "a", tier: "x" }, now - HOUR).usd).toBeCloseTo(0.05, 12);
    expect(store.windowSpend({ team: "a", tier: "y" }, now - HOUR).usd).toBe(0);
    // The window holds what is after its start.
    expect(store.windowSpend({ team: "a" }, T0).usd).toBeCloseTo(0.03, 12);
  });

  it("holds the tasks a reached limit covers until the window allows, saying so", () => {
    const { store } = open();
    spent(store, "a", { team: "a" }, [[T0, 0.04]]);
    spent(store, "a2", { team: "a" }, [[T0 + 10_000, 0.02]]);
    const teamA: SpendLimit = { usdPerHour: 0.05, labels: { team: "a" }, windowMs: HOUR };
    const fleet: SpendLimit = { usdPerHour: 1, labels: {}, windowMs: HOUR };
    const limits = new SpendLimits([fleet, teamA], store);
    const now = T0 + 20_000;
    const held = limits.holding({ team: "a", other: "z" }, now);
    expect(held.map((s) => s.limit)).toEqual([teamA]);
    // 0.06 in the window; once the 0.04 of T0 leaves it, 0.02 is below 0.05.
    expect(held[0]!.releaseAt).toBe(T0 + HOUR);
    expect(limits.holding({ team: "b" }, now)).toEqual([]);
    expect(limits.holding({}, now)).toEqual([]);
    expect(limits.holdsAll(now)).toBe(false);
    expect(limits.nextRelease(now)).toBe(T0 + HOUR);
    expect(heldReason(held)).toBe(
      "spend limit $0.0500/hour for labels team=a reached ($0.0600 in the last hour); starts when the window allows, about 13:00:00 UTC",
    );
    // At the release, the window holds 0.02: nothing is held, nothing to wake for.
    expect(limits.holding({ team: "a" }, T0 + HOUR)).toEqual([]);
    expect(limits.nextRelease(T0 + HOUR)).toBeUndefined();
  });

  it("releases only when enough has left the window, and reads new spend at once", () => {
    const { store } = open();
    spent(store, "a", {}, [[T0, 0.01]]);
    spent(store, "b", {}, [[T0 + 1000, 0.01]]);
    const limits = new SpendLimits([{ usdPerHour: 0.015, labels: {}, windowMs: 5000 }], store);
    expect(limits.holdsAll(T0 + 1500)).toBe(true);
    // T0's leaves at T0 + 5000, but 0.01 is left, still under 0.015: released then.
    expect(limits.nextRelease(T0 + 1500)).toBe(T0 + 5000);
    expect(heldReason(limits.holding({}, T0 + 1500))).toBe(
      "spend limit $0.0150 per 5 s reached ($0.0200 in the last 5 s); starts when the window allows, about 12:00:05 UTC",
    );
    expect(limits.holdsAll(T0 + 5000)).toBe(false);
    // Spend recorded now counts at once (the cached read is dropped).
    spent(store, "c", {}, [[T0 + 5000, 0.01]]);
    expect(limits.holdsAll(T0 + 5000)).toBe(true);
    expect(limits.nextRelease(T0 + 5000)).toBe(T0 + 6000);
  });

  it("waits for as much to leave the window as brings it below the limit", () => {
    const { store } = open();
    spent(store, "a", {}, [[T0, 0.01]]);
    spent(store, "b", {}, [[T0 + 1000, 0.01]]);
    spent(store, "c", {}, [[T0 + 2000, 0.01]]);
    // 0.03 against 0.015: T0's leaving leaves 0.02, T0 + 1000's 0.01.
    const limits = new SpendLimits([{ usdPerHour: 0.015, labels: {}, windowMs: HOUR }], store);
    expect(limits.nextRelease(T0 + 3000)).toBe(T0 + 1000 + HOUR);
    expect(limits.holdsAll(T0 + HOUR)).toBe(true);
    expect(limits.holdsAll(T0 + 1000 + HOUR)).toBe(false);
  });

  it("keeps spend across a restart", () => {
    const { store, dir } = open();
    spent(store, "a", {}, [[T0, 0.5]]);
    store.close();
    stores.splice(stores.indexOf(store), 1);
    const again = open(dir).store;
    const limits = new SpendLimits([{ usdPerHour: 0.5, labels: {}, windowMs: HOUR }], again);
    expect(limits.holdsAll(T0 + 1000)).toBe(true);
    expect(limits.states(T0 + 1000)[0]!.spent).toBeCloseTo(0.5, 12);
  });
});

/** Starts and succeeds, the attempt having cost $0.02. */
const costly: Play = async function* (req, _ctx, host) {
  yield started(req, host);
  host.setAgent("");
  const result = { text: "spent", costUsd: 0.02 };
  yield { kind: { case: "outcome", value: { state: TaskState.SUCCEEDED, result } } };
};

describe("the scheduler under a reached spend limit", () => {
  let world: World | undefined;
  afterEach(async () => {
    await world?.[Symbol.asyncDispose]();
    world = undefined;
  });

  it("passes over the tasks it holds, however high their priority, and starts the rest", async () => {
    world = new World();
    const w = world;
    const teamA = { usdPerHour: 0.01, labels: { team: "a" }, windowMs: 60_000 };
    await w.startOrchestrator({ spendLimits: [teamA] });
    await w.host(w.hostSocket, new FakeAgentHost("", [costly]));
    const submit = async (labels: Record<string, string>, priority = 0, dependsOn: string[] = []) =>
      (await w.client.submitTask({ spec: { prompt: "p", labels, priority, dependsOn } })).task!.id;
    const first = await submit({ team: "a" });
    await until(() => w.orch.store.state(first) === TaskState.SUCCEEDED, "the first task to end");
    const held = await submit({ team: "a" }, 10);
    const after = await submit({ team: "a" }, 0, [held]);
    const other = await submit({ team: "b" });
    await until(() => w.orch.store.state(other) === TaskState.SUCCEEDED, "team b's task to run");
    await w.polls(3);
    const h = await w.task(held);
    expect(h.state).toBe(TaskState.QUEUED);
    expect(h.attempts).toBe(0);
    expect(h.queueReason).toMatch(
      /^spend limit \$0\.0100 per 60 s for labels team=a reached \(\$0\.0200 in the last 60 s\); starts when the window allows, about \d\d:\d\d:\d\d UTC$/,
    );
    expect((await w.task(after)).queueReason).toBe(
      `waiting for 1 dependency to succeed: ${held} (QUEUED)`,
    );
    expect((await w.task(other)).queueReason).toBe("");
  });
});
