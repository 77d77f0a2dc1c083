import { execFile, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { createClient, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { unixTransport } from "../../services/shared/transport.ts";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import {
  ROOT,
  scripted,
  spec,
  startService,
  waitForEnd,
  waitForState,
  type ServiceProcess,
} from "../harness.ts";

const run = promisify(execFile);
const MARKER = "<!-- buf-curl: the block below is run by test/observability/readme.test.ts -->";
const BUF = path.join(ROOT, "node_modules", ".bin", "buf");

/** The README's buf curl block: its shell commands, continuation lines joined, comments dropped. */
function readmeCommands(): string[] {
  const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
  const at = readme.indexOf(MARKER);
  expect(at, "README.md has the buf curl block").toBeGreaterThan(0);
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(at))![1]!;
  return block
    .replace(/\\\n\s*/g, "")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
}

/**
 * The README's `buf curl` commands, verbatim (but for the task id and where buf lives), against
 * a live `conductor up` whose socket is where the README says, relative to the working folder.
 */
describe("the README's buf curl commands", () => {
  let model: FakeModel;
  let dir: string;
  let service: ServiceProcess;
  let client: Client<typeof OrchestratorService>;
  const [setSock, submit, watch, cancel, submitMany] = readmeCommands();

  const sh = (command: string, id = "") =>
    command.replaceAll("npx buf ", `${BUF} `).replaceAll("<id>", id);

  beforeAll(async () => {
    model = await startFakeModel();
    dir = mkdtempSync(path.join(tmpdir(), "conductor-readme-"));
    service = await startService(
      "up",
      [
        "--agents",
        "1",
        "--socket-dir",
        path.join(dir, ".conductor/run"),
        "--data-dir",
        path.join(dir, ".conductor/data"),
        "--metrics-port",
        "0",
      ],
      {
        ANTHROPIC_BASE_URL: model.url,
        ANTHROPIC_API_KEY: "sk-test-key",
        CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
      },
    );
    client = createClient(
      OrchestratorService,
      unixTransport(path.join(dir, ".conductor/run/orchestrator.sock")),
    );
  });
  afterAll(async () => {
    await service?.stop();
    await model?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("submit, watch and cancel a task, and submit many over one stream", async () => {
    expect(setSock).toBe("SOCK=.conductor/run/orchestrator.sock");
    for (const c of [submit, watch, cancel, submitMany]) expect(c).toMatch(/^npx buf curl /);
    const bash = (command: string) => run("bash", ["-c", `${setSock}\n${command}`], { cwd: dir });

    // The only agent is busy, so the README's task stays queued until it is cancelled.
    const { task: busy } = await client.submitTask({
      spec: spec({ prompt: scripted([{ hang: true }]) }),
    });
    await waitForState(client, busy!.id, TaskState.RUNNING);

    const submitted = JSON.parse((await bash(sh(submit!))).stdout) as {
      task: { id: string; state: string; spec: { prompt: string; priority: number } };
    };
    expect(submitted.task).toMatchObject({
      state: "TASK_STATE_QUEUED",
      spec: { prompt: "Write a haiku about queues into haiku.txt", priority: 5 },
    });
    const id = submitted.task.id;

    const watcher = spawn("bash", ["-c", `${setSock}\n${sh(watch!, id)}`], { cwd: dir });
    let watched = "";
    watcher.stdout.setEncoding("utf8");
    const exited = new Promise<number | null>((resolve) => watcher.once("exit", resolve));
    // Cancel once the watch is streaming (its first event, QUEUED, has arrived).
    await new Promise<void>((resolve, reject) => {
      watcher.stdout.on("data", (d: string) => {
        watched += d;
        if (watched.includes("TASK_STATE_QUEUED")) resolve();
      });
      watcher.once("exit", (code) => reject(new Error(`watch exited early (${code}): ${watched}`)));
    });

    const cancelled = JSON.parse((await bash(sh(cancel!, id))).stdout) as {
      task: { id: string; state: string };
    };
    expect(cancelled.task).toMatchObject({ id, state: "TASK_STATE_CANCELLED" });
    expect(await exited).toBe(0);
    expect(watched).toContain("TASK_STATE_CANCELLED");
    expect(watched.indexOf("TASK_STATE_QUEUED")).toBeLessThan(
      watched.indexOf("TASK_STATE_CANCELLED"),
    );

    // Answers in the order asked: a task stored, then the empty prompt refused.
    const answers = (await bash(sh(submitMany!))).stdout.split(/\n(?=\{)/).flatMap(
      (res) =>
        (
          JSON.parse(res) as {
            answers: { taskId?: string; error?: { code: number; message: string } }[];
          }
        ).answers,
    );
    expect(answers).toHaveLength(2);
    expect(answers[1]!.taskId).toBeUndefined();
    expect(answers[1]!.error!.code).toBe(3); // INVALID_ARGUMENT
    expect(answers[1]!.error!.message).toMatch(/prompt/);
    const many = (await client.getTask({ id: answers[0]!.taskId! })).task!;
    expect(many.spec!.prompt).toBe("Add a CONTRIBUTING.md");
    expect(many.state).toBe(TaskState.QUEUED);
    await client.cancelTask({ id: many.id });

    const blocker = (await client.getTask({ id: busy!.id })).task!;
    expect(blocker.state, blocker.result?.error).toBe(TaskState.RUNNING);
    await client.cancelTask({ id: busy!.id });
    expect((await waitForEnd(client, busy!.id)).state).toBe(TaskState.CANCELLED);
  });
});
