import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskSpecSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
import {
  bigPrompt,
  canMount,
  mountSmallDisk,
  submitUntilRefused,
  type SmallDisk,
} from "../../test/full-disk.ts";
import { startService, type ServiceProcess } from "../../test/harness.ts";
import {
  FakeAgentHost,
  hang,
  started,
  succeed,
  until,
  Watch,
  World,
  type Play,
} from "../../test/orchestrator-world.ts";
import { createLogger } from "../shared/log.ts";
import { unixTransport } from "../shared/transport.ts";

describe.skipIf(!canMount)("the Orchestrator on a full disk (a 3 MB tmpfs)", () => {
  let disk: SmallDisk | undefined;
  let mount = "";
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(() => {
    disk = mountSmallDisk(3);
    mount = disk.dir;
  });
  afterEach(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn();
  });
  afterAll(() => disk?.dispose());

  it("refuses submits with RESOURCE_EXHAUSTED, keeps serving, and stores a held outcome once space returns", async () => {
    const dataDir = path.join(mount, "held-outcome");
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const lines: string[] = [];
    const log = createLogger("info", {}, (line) => lines.push(line));
    const world = new World();
    cleanups.push(() => world[Symbol.asyncDispose]());
    await world.startOrchestrator({ dataDir, log, retryBackoffMs: 10 });

    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const heldRun: Play = async function* (req, _ctx, host) {
      yield started(req, host);
      await released;
      host.setAgent("");
      const result = { text: "finished while the disk was full" };
      yield { kind: { case: "outcome", value: { state: TaskState.SUCCEEDED, result } } };
    };
    const host = await world.host(world.hostSocket, new FakeAgentHost("", [heldRun, succeed]));
    const running = await world.submit(1);
    await running.watch.waitFor("the run to start", (_r, s) => s === TaskState.RUNNING);
    const queued = await world.submit(1); // waits for the one agent

    const free = disk!.fill();
    cleanups.push(free);

    // Submit: RESOURCE_EXHAUSTED naming the folder, and nothing stored.
    const refused = await submitUntilRefused(world.client);
    expect(refused.error.code).toBe(Code.ResourceExhausted);
    expect(refused.error.rawMessage).toContain(`the disk holding ${dataDir} is full`);

    // Reads go on.
    expect((await world.task(running.id)).state).toBe(TaskState.RUNNING);
    const { tasks } = await world.client.listTasks({ pageSize: 100 });
    expect(tasks.map((t) => t.id)).toEqual(expect.arrayContaining([running.id, queued.id]));

    // The run ends on its agent; its outcome cannot be stored, so it is held, not replaced.
    release();
    await until(
      () => lines.some((l) => l.includes("could not store the task's outcome")),
      "the store to refuse the outcome",
    );
    expect((await world.task(running.id)).state).toBe(TaskState.RUNNING);
    expect((await world.task(queued.id)).state).toBe(TaskState.QUEUED);
    // Too late to cancel it: said at once, not after the disk frees up.
    const late = await world.client.cancelTask({ id: running.id }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(late?.code).toBe(Code.FailedPrecondition);
    expect(late?.rawMessage).toMatch(/has already ended on its agent; its outcome waits/);

    // Space returns: the outcome as it was, then the queued task runs.
    free();
    await running.watch.ended();
    const done = await world.task(running.id);
    expect(done.state).toBe(TaskState.SUCCEEDED);
    expect(done.result?.text).toBe("finished while the disk was full");
    expect(done.attempts).toBe(1);
    expect(running.watch.changes().at(-1)?.state).toBe(TaskState.SUCCEEDED);
    await queued.watch.ended();
    const next = await world.task(queued.id);
    expect(next.state).toBe(TaskState.SUCCEEDED);
    expect(next.attempts).toBe(1);
    expect(host.runs.map((r) => r.req.taskId)).toEqual([running.id, queued.id]);

    // The refused submit left nothing behind.
    const after = await world.client.listTasks({ pageSize: 100 });
    expect(after.tasks.some((t) => t.spec?.prompt === bigPrompt(refused.label))).toBe(false);
  });

  it("restarts on a full disk with a run in flight, and records its end once space returns", async () => {
    const dataDir = path.join(mount, "in-flight");
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const lines: string[] = [];
    const log = createLogger("info", {}, (line) => lines.push(line));
    const world = new World();
    cleanups.push(() => world[Symbol.asyncDispose]());
    await world.startOrchestrator({ dataDir, log, retryBackoffMs: 10 });
    const host = await world.host(world.hostSocket, new FakeAgentHost("", [hang, succeed]));
    const { id, watch } = await world.submit(2);
    await watch.waitFor("the run to start", (_r, s) => s === TaskState.RUNNING);
    await watch.stop();
    await world.stopOrchestrator(); // the run lives on on its host

    const free = disk!.fill();
    cleanups.push(free);
    await world.startOrchestrator({ dataDir, log, retryBackoffMs: 10 });
    expect((await world.task(id)).state).toBe(TaskState.RUNNING);
    host.setAgent(""); // the run ends there: the next poll confirms the attempt is over
    await until(
      () => lines.some((l) => l.includes("could not store the attempt's outcome")),
      "the store to refuse the retry",
    );
    const held = await world.task(id);
    expect(held.state).toBe(TaskState.RUNNING);
    expect(held.attempts).toBe(1);

    free();
    const again = new Watch(world.client, id);
    cleanups.push(() => again.stop());
    await again.ended();
    const task = await world.task(id);
    expect(task.state).toBe(TaskState.SUCCEEDED);
    expect(task.attempts).toBe(2);
    expect(host.runs.map((r) => r.req.attempt)).toEqual([1, 2]);
    expect(again.reasons()).toContainEqual(
      expect.stringMatching(/^attempt 1 of 2 failed: interrupted: the orchestrator stopped/),
    );
  });

  it("starts on a full disk, serves reads and refuses writes, and takes writes once space returns", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-full-run-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const dataDir = path.join(mount, "restart");
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const args = ["--data-dir", dataDir, "--socket-dir", path.join(dir, "run")];
    const env = {
      CONDUCTOR_OBSERVABILITY_METRICS_PORT: "0",
      CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
      // No AgentHost answers there: tasks stay queued.
      CONDUCTOR_ORCHESTRATOR_AGENT_HOSTS: path.join(dir, "no-agent-host.sock"),
    };
    let proc: ServiceProcess | undefined;
    cleanups.push(() => proc?.stop());
    const client = createClient(
      OrchestratorService,
      unixTransport(path.join(dir, "run", "orchestrator.sock")),
    );

    proc = await startService("orchestrator", args, env);
    const { task } = await client.submitTask({
      spec: create(TaskSpecSchema, { prompt: "queued before the disk filled" }),
    });
    await proc.stop();

    const free = disk!.fill();
    cleanups.push(free);
    proc = await startService("orchestrator", args, env);
    expect((await client.getTask({ id: task!.id })).task?.state).toBe(TaskState.QUEUED);
    const refused = await submitUntilRefused(client);
    expect(refused.error.code).toBe(Code.ResourceExhausted);
    expect(refused.error.rawMessage).toContain(`the disk holding ${dataDir} is full`);
    expect((await client.listTasks({})).tasks.map((t) => t.id)).toContain(task!.id);
    expect((await client.getStats({})).tasksByState["TASK_STATE_QUEUED"]).toBe(1n);
    expect(proc.proc.exitCode).toBe(null);

    free();
    const { task: later } = await client.submitTask({
      spec: create(TaskSpecSchema, { prompt: "after space returned" }),
    });
    expect(later?.state).toBe(TaskState.QUEUED);
    expect(proc.proc.exitCode).toBe(null);
    expect(proc.stderr()).not.toMatch(/uncaught|unhandled/i);
  });
});
