/**
 * A second Orchestrator, AgentHost or Broker started on the data folder of a running `up`
 * is refused before it touches anything, naming the running instance: the running task
 * still succeeds and the live agents' sockets are the same ones.
 */
import { readdirSync, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { scripted, spec, startService, waitForEnd, waitForState } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

describe("a second instance beside a running up", () => {
  const setup = useConductor(() => ({ agents: 1 }));

  it("is refused, naming the running one, and the running task still succeeds", async () => {
    const { conductor } = setup;
    const { client } = conductor;
    const up = conductor.processes[0]!;
    const { task } = await client.submitTask({
      spec: spec({ prompt: scripted([{ text: "still here", delay_ms: 2000 }]) }),
    });
    await waitForState(client, task!.id, TaskState.RUNNING);
    const runDir = path.join(conductor.dataDir, "agents", "agent-1", "run");
    // The sockets this instance serves its agent (model proxy and Broker tools; lifeline).
    const sockets = () =>
      Object.fromEntries(readdirSync(runDir).map((f) => [f, statSync(path.join(runDir, f)).ino]));
    const before = sockets();
    expect(Object.keys(before)).toContain("model.sock");
    const args = ["--socket-dir", conductor.socketDir, "--data-dir", conductor.dataDir];
    const env = {
      ANTHROPIC_BASE_URL: setup.model.url,
      CONDUCTOR_OBSERVABILITY_METRICS_PORT: "0",
      CONDUCTOR_OBSERVABILITY_AGENT_HOST_METRICS_PORT: "0",
      CONDUCTOR_OBSERVABILITY_BROKER_METRICS_PORT: "0",
    };
    for (const service of ["agent-host", "orchestrator", "broker"]) {
      const refused = await startService(service, args, env).then(
        async (p) => {
          await p.stop();
          return "";
        },
        (e: Error) => e.message,
      );
      expect(refused).toMatch(
        new RegExp(`another ${service} already runs on the data folder .*\\(pid ${up.proc.pid}, `),
      );
    }
    expect(sockets()).toEqual(before);
    const ended = await waitForEnd(client, task!.id);
    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
    expect(up.proc.exitCode).toBeNull();
  });
});
