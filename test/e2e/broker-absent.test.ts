/**
 * Split mode without a Broker (`conductor agent-host` + `conductor orchestrator` only): a run
 * is not offered the Broker's tools and says why; once a Broker runs, the next run has them;
 * a Broker that stops mid-run makes each tool call fail with Conductor's own explanation.
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { TaskState, type TaskEvent } from "../../gen/conductor/v1/task_pb.js";
import { ROOT, scripted, spec, startService, waitForEnd, type ServiceProcess } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

const run = promisify(execFile);

describe("split mode without a Broker", () => {
  const setup = useConductor(() => ({
    agents: 1,
    mode: "split",
    env: { CONDUCTOR_ORCHESTRATOR_NODE_ID: `nobroker-${randomUUID().slice(0, 8)}` },
  }));
  let broker: ServiceProcess | undefined;
  afterAll(async () => {
    await broker?.stop();
  });

  const startBroker = async () => {
    const { socketDir, dataDir } = setup.conductor;
    broker = await startService("broker", ["--socket-dir", socketDir, "--data-dir", dataDir], {
      CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
      CONDUCTOR_OBSERVABILITY_BROKER_METRICS_PORT: "0",
    });
  };

  const eventsOf = async (id: string): Promise<TaskEvent[]> => {
    const events: TaskEvent[] = [];
    for await (const { event } of setup.conductor.client.watchTask({ id })) {
      if (event) events.push(event);
    }
    return events;
  };

  /** The tools the CLI announced in its init line. */
  const offeredTools = (events: TaskEvent[]): string[] => {
    for (const e of events) {
      if (e.kind.case !== "output" || e.kind.value.type !== "system") continue;
      const line = JSON.parse(e.kind.value.rawJson) as { subtype?: string; tools?: string[] };
      if (line.subtype === "init") return line.tools ?? [];
    }
    throw new Error("no init line among the task's events");
  };

  const askForAgents = scripted([
    { tool: { name: "mcp__conductor__list_agents", input: {} } },
    { text: "{{last_tool_result}}" },
  ]);

  it("offers no Broker tools and says why, in the events and in `conductor watch`", async () => {
    const { client, socketDir } = setup.conductor;
    const { task } = await client.submitTask({ spec: spec({ prompt: askForAgents }) });
    const ended = await waitForEnd(client, task!.id);
    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);

    const events = await eventsOf(task!.id);
    expect(offeredTools(events).filter((t) => t.startsWith("mcp__conductor__"))).toEqual([]);
    const notices = events.flatMap((e) =>
      e.kind.case === "output" && e.kind.value.type === "conductor" ? [e.kind.value.text] : [],
    );
    expect(notices).toHaveLength(1);
    expect(notices[0]).toMatch(/^No Broker answers at .*broker\.sock/);
    expect(notices[0]).toMatch(/`conductor broker`/);
    // The agent was told the tool does not exist, not a socket error.
    expect(ended.result!.text).not.toMatch(/ECONNRESET/);

    const cli = path.join(ROOT, "bin", "conductor.js");
    const watched = await run(process.execPath, [
      cli,
      "watch",
      task!.id,
      "--socket-dir",
      socketDir,
    ]);
    expect(watched.stdout).toMatch(/! No Broker answers at .*`conductor broker`/);
  });

  it("offers them to the next run once a Broker answers", async () => {
    await startBroker();
    // Each service's ready line names the socket it serves.
    const { socketDir, processes } = setup.conductor;
    expect(broker!.ready["socket"]).toBe(path.join(socketDir, "broker.sock"));
    expect(processes[0]!.ready["socket"]).toBe(path.join(socketDir, "agent-host.sock"));
    expect(processes[1]!.ready["socket"]).toBe(path.join(socketDir, "orchestrator.sock"));
    const { client } = setup.conductor;
    const { task } = await client.submitTask({ spec: spec({ prompt: askForAgents }) });
    const ended = await waitForEnd(client, task!.id);
    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
    // The agent was registered at the run's start: it sees itself.
    expect(ended.result!.text).toMatch(/agent-1 \(you\)/);
    const events = await eventsOf(task!.id);
    expect(offeredTools(events)).toContain("mcp__conductor__list_agents");
    expect(events.some((e) => e.kind.case === "output" && e.kind.value.type === "conductor")).toBe(
      false,
    );
  });

  it("explains a Broker that stopped mid-run in each tool call's error", async () => {
    if (!broker) await startBroker();
    const { client, dataDir } = setup.conductor;
    const go = `go-${randomUUID().slice(0, 8)}`;
    const { task } = await client.submitTask({
      spec: spec({
        allowedTools: ["Bash"],
        prompt: scripted([
          { tool: { name: "mcp__conductor__list_agents", input: {} } },
          // Waits until the test has stopped the Broker.
          { bash: `while [ ! -e ${go} ]; do sleep 0.05; done` },
          {
            tool: { name: "mcp__conductor__send_message", input: { to: "agent-1", message: "hi" } },
          },
          { text: "{{last_tool_result}}" },
        ]),
      }),
    });
    for await (const { event } of client.watchTask({ id: task!.id })) {
      if (
        event?.kind.case === "output" &&
        event.kind.value.toolCalls.some((t) => t.name === "Bash")
      )
        break;
    }
    await broker!.stop();
    broker = undefined;
    writeFileSync(path.join(dataDir, "agents", "agent-1", "workspace", go), "");

    const ended = await waitForEnd(client, task!.id);
    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
    const text = ended.result!.text;
    expect(text).toMatch(/^send_message failed: no Conductor Broker answers/);
    expect(text).toMatch(/`conductor broker`/);
  });
});
