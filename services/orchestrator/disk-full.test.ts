import { execFileSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskSpecSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { startService, type ServiceProcess } from "../../test/harness.ts";
import {
  FakeAgentHost,
  started,
  succeed,
  until,
  World,
  type Play,
} from "../../test/orchestrator-world.ts";
import { createLogger } from "../shared/log.ts";
import { unixTransport } from "../shared/transport.ts";

const isRoot = process.getuid?.() === 0;

/** Fills the file system holding `dir` with one file, 4 KiB at a time (at most 16 MiB). */
function fill(dir: string): string {
  const file = path.join(dir, "filler");
  const fd = openSync(file, "w");
  const chunk = Buffer.alloc(4096, 1);
  try {
    for (let i = 0; i < 4096; i++) writeSync(fd, chunk);
    throw new Error(`${dir} did not fill up with 16 MiB`);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOSPC") throw e;
  } finally {
    closeSync(fd);
  }
  return file;
}

/** A prompt of about 9 KB, unique to `label`. */
const bigPrompt = (label: string) => `${label} ${"x".repeat(9_000)}`;

/** Submits large tasks until one is refused (at most 40); returns the refusal and the labels refused. */
async function submitUntilRefused(client: Client<typeof OrchestratorService>) {
  for (let i = 0; i < 40; i++) {
    const label = `while-full-${i}`;
    try {
      await client.submitTask({ spec: create(TaskSpecSchema, { prompt: bigPrompt(label) }) });
    } catch (e) {
      return { error: ConnectError.from(e), label };
    }
  }
  throw new Error("40 large submits on a full disk were all accepted");
}

describe.skipIf(!isRoot)("the Orchestrator on a full disk (a 3 MB tmpfs)", () => {
  let mount = "";
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(() => {
    mount = mkdtempSync(path.join(tmpdir(), "conductor-full-"));
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", mount]);
  });
  afterEach(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn();
  });
  afterAll(() => {
    if (!mount) return;
    execFileSync("umount", [mount]);
    rmSync(mount, { recursive: true, force: true });
  });

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

    const filler = fill(mount);
    let freed = false;
    cleanups.push(() => (freed ? undefined : rmSync(filler, { force: true })));

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

    // Space returns: the outcome as it was, then the queued task runs.
    rmSync(filler);
    freed = true;
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

    const filler = fill(mount);
    let freed = false;
    cleanups.push(() => (freed ? undefined : rmSync(filler, { force: true })));
    proc = await startService("orchestrator", args, env);
    expect((await client.getTask({ id: task!.id })).task?.state).toBe(TaskState.QUEUED);
    const refused = await submitUntilRefused(client);
    expect(refused.error.code).toBe(Code.ResourceExhausted);
    expect(refused.error.rawMessage).toContain(`the disk holding ${dataDir} is full`);
    expect((await client.listTasks({})).tasks.map((t) => t.id)).toContain(task!.id);
    expect((await client.getStats({})).tasksByState["TASK_STATE_QUEUED"]).toBe(1n);
    expect(proc.proc.exitCode).toBe(null);

    rmSync(filler);
    freed = true;
    const { task: later } = await client.submitTask({
      spec: create(TaskSpecSchema, { prompt: "after space returned" }),
    });
    expect(later?.state).toBe(TaskState.QUEUED);
    expect(proc.proc.exitCode).toBe(null);
    expect(proc.stderr()).not.toMatch(/uncaught|unhandled/i);
  });
});
