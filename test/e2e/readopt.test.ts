/**
 * An AgentHost restarted after kill -9 re-adopts its agents' sandboxes that are still healthy
 * (the same container, warm, with its workspace) instead of destroying them, and runs tasks
 * in them: the sockets it makes anew are seen inside through the same run folder.
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { runtimeEnv, scripted, spec, startService, testRuntimes, waitForEnd } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

describe.each(testRuntimes())("an AgentHost restarted on %s", (runtime) => {
  const node = `readopt-${randomUUID().slice(0, 8)}`;
  const setup = useConductor(() => ({
    agents: 1,
    mode: "split",
    runtime,
    env: { CONDUCTOR_ORCHESTRATOR_NODE_ID: node, CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "info" },
  }));
  const container = async () =>
    runtime === "process"
      ? undefined
      : (
          await promisify(execFile)(runtime, [
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            `label=dev.conductor.node=${node}`,
          ])
        ).stdout.trim();

  it("re-adopts its healthy agents and runs tasks in them", async () => {
    const { conductor } = setup;
    const { client } = conductor;
    const write = (name: string) =>
      client.submitTask({
        spec: spec({
          prompt: scripted([{ write: { path: `${name}.txt`, content: name } }, { text: "ok" }]),
        }),
      });
    const first = await waitForEnd(client, (await write("before")).task!.id);
    expect(first.state, first.result?.error).toBe(TaskState.SUCCEEDED);
    const before = await container();

    await conductor.processes[0]!.kill9();
    await conductor.restartAgentHost();

    const log = conductor.processes[0]!.stderr();
    expect(log).toMatch(/re-adopting an agent sandbox.*"agent_id":"agent-1"/);
    expect(log).not.toMatch(/reaping an agent sandbox/);
    expect(await container()).toBe(before);
    const second = await waitForEnd(client, (await write("after")).task!.id);
    expect(second.state, second.result?.error).toBe(TaskState.SUCCEEDED);
    const ws = path.join(conductor.dataDir, "agents", "agent-1", "workspace");
    expect(readFileSync(path.join(ws, "before.txt"), "utf8")).toBe("before");
    expect(readFileSync(path.join(ws, "after.txt"), "utf8")).toBe("after");
  });

  it("reaps a sandbox made from other settings, and makes the agent anew", async () => {
    const { conductor, model } = setup;
    const before = await container();
    await conductor.processes[0]!.kill9();
    // The same folders, another memory limit: the sandbox left is not what it would make now.
    conductor.processes[0] = await startService(
      "agent-host",
      [
        ...["--runtime", runtime, "--agents", "1"],
        ...["--socket-dir", conductor.socketDir, "--data-dir", conductor.dataDir],
      ],
      {
        ANTHROPIC_BASE_URL: model.url,
        ANTHROPIC_API_KEY: "sk-test-key",
        CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "info",
        CONDUCTOR_OBSERVABILITY_AGENT_HOST_METRICS_PORT: "0",
        CONDUCTOR_ORCHESTRATOR_NODE_ID: node,
        CONDUCTOR_AGENT_CONTAINER_MEMORY: "768m",
        ...runtimeEnv(),
      },
    );
    const log = conductor.processes[0].stderr();
    expect(log).toMatch(/reaping an agent sandbox.*"agent_id":"agent-1"/);
    expect(log).not.toMatch(/re-adopting an agent sandbox/);
    if (before !== undefined) {
      const now = await container();
      expect(now).not.toBe("");
      expect(now).not.toBe(before);
    }
    const { task } = await conductor.client.submitTask({
      spec: spec({ prompt: scripted([{ text: "anew" }]) }),
    });
    const ended = await waitForEnd(conductor.client, task!.id);
    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
  });
});
