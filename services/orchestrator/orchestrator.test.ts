import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { AgentState } from "../../gen/conductor/v1/agent_pb.js";
import { ErrorKind, TaskSpecSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
import {
  breakOff,
  FakeAgentHost,
  hang,
  refuse,
  started,
  succeed,
  until,
  Watch,
  World,
  type Play,
} from "../../test/orchestrator-world.ts";
import { eventually } from "../../test/harness.ts";
import { REST_AFTER } from "./runner.ts";
import { taskTypeRegistry } from "./load-task-types.ts";
import { createOrchestratorObserver } from "./telemetry.ts";
import { TaskStore } from "./store.ts";

const WAITING = /waiting for it to confirm the attempt has ended before retrying/;

describe("an attempt whose AgentHost is lost", () => {
  let world: World | undefined;
  afterEach(async () => {
    await world?.[Symbol.asyncDispose]();
    world = undefined;
  });

  it("is retried only once the host confirms it has ended", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator();
    const first = await w.host(w.hostSocket, new FakeAgentHost("", [hang]));
    const { id, watch } = await w.submit(2);
    await watch.waitFor("the run to start", (_r, s) => s === TaskState.RUNNING);

    await first.kill(); // like kill -9 of the AgentHost: the CLI may live on
    const note = await watch.waitFor("the unconfirmed notice", (r) => WAITING.test(r));
    expect(note.reason).toMatch(
      new RegExp(`^lost agent host ${w.hostSocket} during attempt 1 \\(`),
    );
    expect(note.state).toBe(TaskState.RUNNING);
    expect(note.attempt).toBe(1);

    // Down and silent: nothing moves, however many polls go by.
    await w.polls(3);
    expect(w.orch.hosts.links[0]!.reachable).toBe(false);
    let task = await w.task(id);
    expect(task.state).toBe(TaskState.RUNNING);
    expect(task.attempts).toBe(1);
    expect(watch.changes().filter((c) => c.state === TaskState.QUEUED)).toHaveLength(1);

    // Back (restarted) but still reporting the run: asked to end it, still no retry.
    const second = await w.host(w.hostSocket, new FakeAgentHost(id, [succeed]));
    await until(() => second.cancelRuns.includes(id), "CancelRun on the host that came back");
    await w.polls(3);
    task = await w.task(id);
    expect(task.state).toBe(TaskState.RUNNING);
    expect(task.attempts).toBe(1);
    expect(second.runs).toHaveLength(0);

    // The run has ended there: confirmed, so the retry starts and succeeds.
    second.setAgent("");
    await watch.ended();
    task = await w.task(id);
    expect(task.state).toBe(TaskState.SUCCEEDED);
    expect(task.attempts).toBe(2);
    expect(task.result?.text).toBe("done in attempt 2");
    expect(second.runs.map((r) => r.req.attempt)).toEqual([2]);
    expect(first.runs).toHaveLength(1);
    expect(watch.reasons()).toContainEqual(
      expect.stringMatching(
        new RegExp(
          `^attempt 1 of 2 failed: lost the agent host during the run \\(.*\\); agent host ${w.hostSocket} confirmed that no agent runs it any more; retrying`,
        ),
      ),
    );
  });

  it("is taken as over once its host has been silent for the timeout", async () => {
    world = new World();
    const w = world;
    const timeoutMs = 300;
    await w.startOrchestrator({
      agentHosts: [w.hostSocket, w.otherHostSocket],
      unconfirmedAttemptTimeoutMs: timeoutMs,
    });
    const first = await w.host(w.hostSocket, new FakeAgentHost("", [hang]));
    const { id, watch } = await w.submit(2);
    await watch.waitFor("the run to start", (_r, s) => s === TaskState.RUNNING);
    await first.kill();
    const lost = await watch.waitFor("the unconfirmed notice", (r) => WAITING.test(r));
    // An idle agent elsewhere does not get the retry before the timeout.
    const other = await w.host(w.otherHostSocket);
    await watch.ended();

    const task = await w.task(id);
    expect(task.state).toBe(TaskState.SUCCEEDED);
    expect(task.attempts).toBe(2);
    expect(other.runs).toHaveLength(1);
    expect(other.runs[0]!.at - lost.at).toBeGreaterThanOrEqual(timeoutMs);
    const retry = watch.changes().find((c) => c.state === TaskState.QUEUED && c.attempt === 1)!;
    expect(retry.reason).toMatch(
      /did not answer for [\d.]+ s \(orchestrator.unconfirmed_attempt_timeout_seconds\), so the attempt is taken as over/,
    );
  });

  it("is cancelled at once, and its host is asked to end the run", async () => {
    world = new World();
    const w = world;
    // The host lives on, its stream broke, and its agent keeps running the task.
    const host = await w.host(w.hostSocket, new FakeAgentHost("", [breakOff]));
    await w.startOrchestrator({ pollIntervalMs: 60_000 }); // no poll sends CancelRun
    await until(() => w.orch.agents().length === 1, "the first poll");
    const { id, watch } = await w.submit(3);
    await watch.waitFor("the unconfirmed notice", (r) => WAITING.test(r));

    const { task } = await w.client.cancelTask({ id });
    expect(task?.state).toBe(TaskState.CANCELLED);
    await watch.ended();
    await until(() => host.cancelRuns.includes(id), "CancelRun on the host");

    // Final: the run's end on the host starts nothing more.
    host.setAgent("");
    await w.orch.hosts.refresh();
    w.orch.schedule();
    expect((await w.task(id)).state).toBe(TaskState.CANCELLED);
    expect(host.runs).toHaveLength(1);
  });

  it("is cancelled at once while its host is unreachable", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator();
    const host = await w.host(w.hostSocket, new FakeAgentHost("", [hang]));
    const { id, watch } = await w.submit(3);
    await watch.waitFor("the run to start", (_r, s) => s === TaskState.RUNNING);
    await host.kill();
    await watch.waitFor("the unconfirmed notice", (r) => WAITING.test(r));

    const { task } = await w.client.cancelTask({ id });
    expect(task?.state).toBe(TaskState.CANCELLED);
    expect(task?.result?.error).toBe("cancelled while running");
    // The host comes back idle: still nothing is retried.
    const back = await w.host(w.hostSocket);
    await w.polls(3);
    expect((await w.task(id)).state).toBe(TaskState.CANCELLED);
    expect(back.runs).toHaveLength(0);
  });

  it("waits for its host's word after an Orchestrator restart", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator();
    const host = await w.host(w.hostSocket, new FakeAgentHost("", [hang, succeed]));
    const first = await w.submit(2);
    await first.watch.waitFor("the run to start", (_r, s) => s === TaskState.RUNNING);
    await first.watch.stop();
    await w.stopOrchestrator(); // the host's run lives on (an orphan) until it is told

    await w.startOrchestrator();
    const watch = new Watch(w.client, first.id);
    const note = await watch.waitFor("the unconfirmed notice", (r) => WAITING.test(r));
    expect(note.reason).toMatch(
      /^the orchestrator stopped during attempt 1 of 2, on agent host .*agent-host\.sock; waiting/,
    );
    await until(() => host.cancelRuns.includes(first.id), "CancelRun after the restart");
    await w.polls(2);
    expect((await w.task(first.id)).state).toBe(TaskState.RUNNING);
    expect(host.runs).toHaveLength(1);

    host.setAgent("");
    await watch.ended();
    const task = await w.task(first.id);
    expect(task.state).toBe(TaskState.SUCCEEDED);
    expect(task.attempts).toBe(2);
    expect(host.runs.map((r) => r.req.attempt)).toEqual([1, 2]);
    expect(watch.reasons()).toContainEqual(
      expect.stringMatching(/^attempt 1 of 2 failed: interrupted: the orchestrator stopped/),
    );
    await watch.stop();
  });

  it("is requeued at once after a restart when no host was recorded (an older database)", async () => {
    world = new World();
    const w = world;
    const store = new TaskStore(path.join(w.dir, "data"));
    const spec = create(TaskSpecSchema, { prompt: "do the work" });
    const { task: old } = store.insert("old-task", spec, 2, Date.now());
    store.transition(old.id, [TaskState.QUEUED], {
      state: TaskState.RUNNING,
      agentId: "agent-1",
      attempts: 1,
    });
    store.close();

    await w.startOrchestrator();
    const host = await w.host(w.hostSocket);
    const watch = new Watch(w.client, old.id);
    await watch.ended();
    const task = await w.task(old.id);
    expect(task.state).toBe(TaskState.SUCCEEDED);
    expect(task.attempts).toBe(2);
    expect(host.runs).toHaveLength(1);
    expect(watch.reasons().some((r) => WAITING.test(r))).toBe(false);
    await watch.stop();
  });
});

describe("a RunTask refused before it started", () => {
  let world: World | undefined;
  afterEach(async () => {
    await world?.[Symbol.asyncDispose]();
    world = undefined;
  });

  it("is requeued at once without using an attempt", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator();
    const host = await w.host(w.hostSocket, new FakeAgentHost("", [refuse, succeed]));
    const { id, watch } = await w.submit(1);
    await watch.ended();
    const task = await w.task(id);
    expect(task.state).toBe(TaskState.SUCCEEDED);
    expect(task.attempts).toBe(1);
    expect(host.runs.map((r) => r.req.attempt)).toEqual([1, 1]);
    expect(watch.reasons()).toContainEqual(
      expect.stringMatching(/^agent agent-1 could not start it \(agent agent-1 is not idle\)/),
    );
    expect(watch.reasons().some((r) => WAITING.test(r))).toBe(false);
  });

  it("is requeued at once when the host could not be reached at all", async () => {
    world = new World();
    const w = world;
    const gone = await w.host(w.hostSocket);
    await w.startOrchestrator({ pollIntervalMs: 60_000 });
    await until(() => w.orch.agents().length === 1, "the first poll");
    await gone.kill(); // the registry still lists its idle agent until the next poll
    const { id, watch } = await w.submit(1);
    await watch.waitFor("the requeue", (r) => /could not start it/.test(r));
    expect((await w.task(id)).attempts).toBe(0);

    const back = await w.host(w.hostSocket);
    await w.orch.hosts.refresh();
    w.orch.schedule();
    await watch.ended();
    const task = await w.task(id);
    expect(task.state).toBe(TaskState.SUCCEEDED);
    expect(task.attempts).toBe(1);
    expect(back.runs).toHaveLength(1);
    expect(watch.reasons().some((r) => WAITING.test(r))).toBe(false);
  });
});

describe("an agent whose run ended", () => {
  let world: World | undefined;
  afterEach(async () => {
    await world?.[Symbol.asyncDispose]();
    world = undefined;
  });

  it("takes the next task at once, though a poll during the run said it was busy", async () => {
    world = new World();
    const w = world;
    const polledWhileBusy: Play = async function* (req, ctx, host) {
      yield started(req, host);
      await w.orch.hosts.refresh(); // the host's list now says agent-1 is BUSY with this task
      yield* succeed(req, ctx, host);
    };
    const host = await w.host(w.hostSocket, new FakeAgentHost("", [polledWhileBusy, succeed]));
    // Polls a minute apart: the next task must not wait for one to find the agent free.
    await w.startOrchestrator({ pollIntervalMs: 60_000 });
    await until(() => w.orch.agents().length === 1, "the first poll");
    const first = await w.submit(1);
    await first.watch.ended();
    const second = await w.submit(1);
    await second.watch.ended();
    expect((await w.task(second.id)).state).toBe(TaskState.SUCCEEDED);
    expect(host.runs).toHaveLength(2);
    expect(Number(w.orch.agents()[0]!.tasksCompleted)).toBe(2);
  });
});

/** Starts, then ends FAILED with `result` (`permanent`: no retry can get past it). */
const failing = (
  result: { error: string; errorKind?: ErrorKind } & Record<string, unknown>,
  permanent = false,
): Play =>
  async function* (req, _ctx, host) {
    yield started(req, host);
    host.setAgent("");
    yield {
      kind: {
        case: "outcome",
        value: { state: TaskState.FAILED, result: { isError: true, ...result }, permanent },
      },
    };
  };

/** Fails in a way no retry gets past (the CLI could not be started: E2BIG). */
const failForGood = failing({ error: "cannot start the Claude Code CLI: spawn E2BIG" }, true);
/** Fails in a way another attempt may get past. */
const failOnce = failing({ error: "the CLI was killed" });
/** Fails at once for infrastructure, as an agent whose workspace folder is gone does. */
const brokenAgent = failing({
  error: "the task's workspace could not be opened: ENOENT",
  errorKind: ErrorKind.INFRASTRUCTURE,
});

/** Starts, and succeeds a little later (the agent is BUSY meanwhile). */
const succeedSlowly: Play = async function* (req, ctx, host) {
  yield started(req, host);
  await delay(150, undefined, { signal: ctx.signal });
  yield* succeed(req, ctx, host);
};

describe("an attempt's failure", () => {
  let world: World | undefined;
  afterEach(async () => {
    await world?.[Symbol.asyncDispose]();
    world = undefined;
  });

  it("that cannot succeed on retry ends the task at once, attempts left or not", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator();
    const host = await w.host(w.hostSocket, new FakeAgentHost("", [failForGood, succeed]));
    const { id, watch } = await w.submit(3);
    await watch.ended();
    const task = await w.task(id);
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.attempts).toBe(1);
    expect(host.runs).toHaveLength(1);
    expect(task.result?.error).toMatch(
      /spawn E2BIG; not retried \(attempt 1 of 3\): another attempt cannot succeed$/,
    );
  });

  it("on an agent that keeps failing for infrastructure rests it, and retries go elsewhere", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator({ agentHosts: [w.hostSocket, w.otherHostSocket] });
    const broken = await w.host(w.hostSocket, new FakeAgentHost("", [brokenAgent]));
    const good = await w.host(w.otherHostSocket, new FakeAgentHost("", [succeedSlowly]));
    const submitted = [];
    for (let i = 0; i < 8; i++) submitted.push(await w.submit(3));
    for (const { watch } of submitted) await watch.ended();
    for (const { id } of submitted) expect((await w.task(id)).state).toBe(TaskState.SUCCEEDED);
    // It took REST_AFTER runs in a row, then rested (30 s) while the good agent took the rest;
    // no retry went back to it while the good one was there.
    expect(broken.runs).toHaveLength(REST_AFTER);
    expect(new Set(broken.runs.map((r) => r.req.taskId)).size).toBe(REST_AFTER);
    expect(good.runs).toHaveLength(8);
  });

  it("ends an agent's rest once it comes back from FAILED (its engine back, or replaced)", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator();
    const plays = [...Array<Play>(REST_AFTER).fill(brokenAgent), succeed];
    const host = await w.host(w.hostSocket, new FakeAgentHost("", plays));
    for (let i = 0; i < REST_AFTER; i++) await (await w.submit(1)).watch.ended();
    // Resting now (30 s): the next task waits, while ListAgents shows the agent lost, then back.
    const next = await w.submit(1);
    host.failed = true;
    await eventually(async () => {
      const { agents } = await w.client.listAgents({});
      return agents[0]?.state === AgentState.FAILED ? true : undefined;
    }, "the agent seen FAILED");
    host.failed = false;
    const started = Date.now();
    await next.watch.ended();
    expect(Date.now() - started).toBeLessThan(10_000); // not the rest's 30 s
    expect((await w.task(next.id)).state).toBe(TaskState.SUCCEEDED);
    expect(host.runs).toHaveLength(REST_AFTER + 1);
  });

  it("that may pass is retried as before", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator();
    const host = await w.host(w.hostSocket, new FakeAgentHost("", [failOnce, succeed]));
    const { id, watch } = await w.submit(3);
    await watch.ended();
    expect((await w.task(id)).state).toBe(TaskState.SUCCEEDED);
    expect(host.runs.map((r) => r.req.attempt)).toEqual([1, 2]);
  });

  it("decided by the Orchestrator (the task's type cannot build it now) keeps what the attempts before it spent and checked", async () => {
    world = new World();
    const w = world;
    let gone = false;
    const prompt = ({ prompt }: { prompt: string }) => {
      if (gone) throw new Error("its module fails now");
      return prompt;
    };
    const types = taskTypeRegistry([{ type: { name: "fickle", prompt }, source: "test" }]);
    await w.startOrchestrator({ types });
    const spent: Play = async function* (req, ctx, host) {
      gone = true;
      yield* failing({
        error: "check `make test` failed (exit 2)",
        errorKind: ErrorKind.CHECK_FAILED,
        costUsd: 0.5,
        usage: { inputTokens: 10n, outputTokens: 5n },
        sessionId: "0b7e3d1c-5c4c-4f43-9c55-8a4c8a1e2f10",
        checks: [{ command: "make test", exitCode: 2, attempt: 1 }],
        change: { branch: "conductor/fickle", headCommit: "c0ffee", committed: true },
      })(req, ctx, host);
    };
    await w.host(w.hostSocket, new FakeAgentHost("", [spent]));
    const spec = create(TaskSpecSchema, { prompt: "p", type: "fickle", maxAttempts: 3 });
    const { task } = await w.client.submitTask({ spec });
    const watch = new Watch(w.client, task!.id);
    await watch.ended();
    await watch.stop();
    const { result, attempts, state } = await w.task(task!.id);
    expect([state, attempts, result?.errorKind]).toEqual([
      TaskState.FAILED,
      2,
      ErrorKind.INVALID_REQUEST,
    ]);
    expect(result?.error).toMatch(/^the task's type cannot build its attempt: .*fails now/);
    expect(result?.costUsd).toBe(0.5);
    expect(result?.usage?.outputTokens).toBe(5n);
    expect(result?.checks.map((c) => [c.command, c.attempt])).toEqual([["make test", 1]]);
    expect(result?.change?.branch).toBe("conductor/fickle");
    expect((await w.client.getStats({})).costUsdTotal).toBe(0.5);
  });

  it("whose host reports an absurd cost ends as any other, its cost kept at $10^9", async () => {
    world = new World();
    const w = world;
    const registry = new Registry();
    const observer = createOrchestratorObserver({ registry, defaultModel: "default" });
    await w.startOrchestrator({ observer });
    const absurd = failing({
      error: "overloaded",
      errorKind: ErrorKind.API_ERROR,
      costUsd: Infinity,
    });
    await w.host(w.hostSocket, new FakeAgentHost("", [absurd, absurd]));
    const { id, watch } = await w.submit(2);
    await watch.ended();
    const task = await w.task(id);
    expect([task.state, task.attempts, task.result?.costUsd]).toEqual([TaskState.FAILED, 2, 1e9]);
    expect((await w.client.getStats({})).costUsdTotal).toBe(1e9);
    const counted = await registry.getSingleMetric("conductor_cost_usd_total")!.get();
    expect(counted.values.map((v) => v.value)).toEqual([1e9]);
  });
});

describe("a task of a type", () => {
  let world: World | undefined;
  afterEach(async () => {
    await world?.[Symbol.asyncDispose]();
    world = undefined;
  });

  /** Submits a code_review task and waits for it to end. */
  async function review(w: World) {
    const spec = create(TaskSpecSchema, {
      prompt: "Look at auth.",
      type: "code_review",
      params: { focus: "secrets" },
      maxAttempts: 1,
    });
    const { task } = await w.client.submitTask({ spec });
    const watch = new Watch(w.client, task!.id);
    await watch.ended();
    await watch.stop();
    return w.task(task!.id);
  }

  it("runs what its type built, and keeps the spec as given", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator();
    const answered: Play = async function* (req, _ctx, host) {
      yield started(req, host);
      host.setAgent("");
      const result = { text: "{}", structured: { findings: [] } };
      yield { kind: { case: "outcome", value: { state: TaskState.SUCCEEDED, result } } };
    };
    const host = await w.host(w.hostSocket, new FakeAgentHost("", [answered]));
    const task = await review(w);
    expect(task.state).toBe(TaskState.SUCCEEDED);
    expect(task.result?.structured).toEqual({ findings: [] });
    expect(task.spec?.prompt).toBe("Look at auth.");
    const { req } = host.runs[0]!;
    expect(req.spec?.prompt).toMatch(/Look at auth\.[\s\S]*Focus above all on: secrets\./);
    expect(req.spec?.allowedTools).toEqual(["Read", "Glob", "Grep", "LS"]);
    expect(req.spec?.permissionMode).toBe("default");
    expect(JSON.parse(req.resultSchema)).toMatchObject({ required: ["findings"] });
  });

  it("fails when a host's success lacks the structured answer its type asks for", async () => {
    world = new World();
    const w = world;
    await w.startOrchestrator();
    await w.host(w.hostSocket, new FakeAgentHost("", [succeed]));
    const task = await review(w);
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.result?.error).toMatch(/^the agent host gave no structured answer/);
  });
});

describe("task ids", () => {
  it("are UUIDv7, ordered as the tasks were submitted (new rows go at the end of each index)", async () => {
    await using w = new World();
    await w.startOrchestrator();
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const { task } = await w.client.submitTask({ spec: create(TaskSpecSchema, { prompt: "p" }) });
      ids.push(task!.id);
    }
    for (const id of ids)
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect([...ids].sort()).toEqual(ids);
  });
});
