import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import { canMount, mountSmallDisk, submitUntilRefused, type SmallDisk } from "../full-disk.ts";
import {
  eventually,
  runtimeEnv,
  scripted,
  spec,
  startService,
  testRuntimes,
  waitForEnd,
  type ServiceProcess,
} from "../harness.ts";
import { unixTransport } from "../../services/shared/transport.ts";

/**
 * Issue 9's reproduction, on real processes: the Orchestrator's data folder on a 3 MB tmpfs
 * fills up while a task runs on a real agent (the process runtime) and another waits.
 */
describe.skipIf(!canMount || !testRuntimes().includes("process"))(
  "the Orchestrator's disk fills up while a task runs",
  () => {
    let disk: SmallDisk | undefined;
    let model: FakeModel | undefined;
    let dir = "";
    const processes: ServiceProcess[] = [];

    beforeAll(async () => {
      disk = mountSmallDisk(3);
      dir = mkdtempSync(path.join(tmpdir(), "conductor-e2e-full-"));
      model = await startFakeModel();
    });
    afterAll(async () => {
      for (const p of processes.reverse()) await p.stop();
      await model?.close();
      disk?.dispose();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it("refuses submits with RESOURCE_EXHAUSTED, stays up, and records each task as it really ended", async () => {
      const socketDir = path.join(dir, "run");
      const agentData = path.join(dir, "agent-host-data"); // the AgentHost's disk is not full
      const orchestratorData = path.join(disk!.dir, "data");
      const env = {
        ANTHROPIC_BASE_URL: model!.url,
        ANTHROPIC_API_KEY: "sk-test-key",
        CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
        CONDUCTOR_OBSERVABILITY_METRICS_PORT: "0",
        CONDUCTOR_OBSERVABILITY_AGENT_HOST_METRICS_PORT: "0",
        CONDUCTOR_AGENT_BROKER_TOOLS: "false",
        ...runtimeEnv(),
      };
      const common = ["--socket-dir", socketDir];
      const host = [...common, "--runtime", "process", "--agents", "1", "--data-dir", agentData];
      processes.push(await startService("agent-host", host, env));
      const orchestrator = await startService(
        "orchestrator",
        [...common, "--data-dir", orchestratorData],
        env,
      );
      processes.push(orchestrator);
      const client = createClient(
        OrchestratorService,
        unixTransport(path.join(socketDir, "orchestrator.sock")),
      );

      // The first task runs until the test creates `go` in the agent's workspace.
      const { task: first } = await client.submitTask({
        spec: spec({
          prompt: scripted([
            { bash: "while [ ! -e go ]; do sleep 0.05; done; echo went" },
            { text: "finished while the disk was full" },
          ]),
          allowedTools: ["Bash"],
        }),
      });
      for await (const { event } of client.watchTask({ id: first!.id })) {
        if (
          event?.kind.case === "output" &&
          event.kind.value.toolCalls.some((t) => t.name === "Bash")
        )
          break;
      }
      const { task: second } = await client.submitTask({
        spec: spec({ prompt: scripted([{ text: "ran after space returned" }]) }),
      });

      const free = disk!.fill();
      try {
        const refused = await submitUntilRefused(client);
        expect(refused.error.code).toBe(Code.ResourceExhausted);
        expect(refused.error.rawMessage).toContain(`the disk holding ${orchestratorData} is full`);

        // The run ends on its agent; the Orchestrator holds the outcome it cannot store.
        writeFileSync(path.join(agentData, "agents", "agent-1", "workspace", "go"), "");
        await eventually(
          async () =>
            orchestrator.stderr().includes("could not store the task's outcome") || undefined,
          "the Orchestrator to find it cannot store the outcome",
        );
        expect((await client.getTask({ id: first!.id })).task?.state).toBe(TaskState.RUNNING);
        expect((await client.getTask({ id: second!.id })).task?.state).toBe(TaskState.QUEUED);
        const { tasks } = await client.listTasks({});
        expect(tasks.map((t) => t.id)).toEqual([second!.id, first!.id]);
        for (const p of processes) expect(p.proc.exitCode).toBe(null);
      } finally {
        free();
      }

      const done = await waitForEnd(client, first!.id);
      // What the agent printed while the disk was full is missing, and the events say so.
      const notes: string[] = [];
      for await (const { event } of client.watchTask({ id: first!.id }))
        if (event?.kind.case === "stateChange") notes.push(event.kind.value.reason);
      expect(notes).toContainEqual(
        expect.stringMatching(
          new RegExp(
            `^\\d+ lines of the agent's output are missing: they could not be stored \\(the disk holding ${orchestratorData} is full`,
          ),
        ),
      );
      expect(done.state).toBe(TaskState.SUCCEEDED);
      expect(done.result?.text).toBe("finished while the disk was full");
      expect(done.attempts).toBe(1);
      const next = await waitForEnd(client, second!.id);
      expect(next.state).toBe(TaskState.SUCCEEDED);
      expect(next.result?.text).toBe("ran after space returned");
      expect(next.attempts).toBe(1);
      for (const p of processes) expect(p.proc.exitCode).toBe(null);
      expect(orchestrator.stderr()).not.toMatch(/uncaught|unhandled/i);
    });
  },
);
