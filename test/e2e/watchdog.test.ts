import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { resolveClaudePath } from "../../services/shared/claude-path.ts";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import {
  processesWith,
  scripted,
  spec,
  startConductor,
  waitForEnd,
  type Conductor,
} from "../harness.ts";

/** The watchdog: a CLI that lingers after its result, or goes silent, is ended. */
describe("the run watchdog", () => {
  let model: FakeModel;
  let conductor: Conductor;

  beforeAll(async () => {
    model = await startFakeModel();
    // A CLI that hangs after printing its result: the real CLI, then a process that never exits.
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-hang-"));
    const wrapper = path.join(dir, "claude-then-hang");
    writeFileSync(wrapper, `#!/bin/sh\n"${resolveClaudePath("")}" "$@"\nexec sleep 600\n`);
    chmodSync(wrapper, 0o755);
    conductor = await startConductor({
      agents: 2,
      modelUrl: model.url,
      env: {
        CONDUCTOR_AGENT_CLAUDE_PATH: wrapper,
        CONDUCTOR_AGENT_IDLE_TIMEOUT_SECONDS: "3",
        CONDUCTOR_AGENT_RESULT_GRACE_SECONDS: "1",
      },
    });
  });
  afterAll(async () => {
    await conductor?.close();
    await model?.close();
  });

  it("keeps the result of a CLI that hangs after printing it, and ends the CLI", async () => {
    const { client } = conductor;
    const started = Date.now();
    const { task } = await client.submitTask({
      spec: spec({ prompt: scripted([{ text: "all done" }]) }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(ended.state).toBe(TaskState.SUCCEEDED);
    expect(ended.result?.text).toBe("all done");
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(processesWith(`CONDUCTOR_TASK_ID=${task!.id}`)).toEqual([]);
  });

  it("fails a run that goes silent, with the reason", async () => {
    const { client } = conductor;
    const { task } = await client.submitTask({
      spec: spec({ prompt: scripted([{ text: "too late", delay_ms: 30_000 }]) }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(ended.state).toBe(TaskState.FAILED);
    expect(ended.result?.error).toMatch(/printed nothing for 3 s/);
    expect(processesWith(`CONDUCTOR_TASK_ID=${task!.id}`)).toEqual([]);
  });
});
