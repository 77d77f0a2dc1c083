/**
 * kill -9 of an AgentHost mid-task (split mode): its runs must end with it, and the
 * Orchestrator must start the retry only once the attempt is known to be over — never two
 * attempts at once, so a task's side effect happens once.
 */
import { randomUUID } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { eventually, scripted, spec, testRuntimes, waitForEnd, waitForState } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

describe.each(testRuntimes())("an AgentHost killed mid-task on %s", (runtime) => {
  const setup = useConductor(() => ({
    agents: 1,
    mode: "split",
    runtime,
    env: {
      CONDUCTOR_ORCHESTRATOR_NODE_ID: `death-${randomUUID().slice(0, 8)}`,
      CONDUCTOR_ORCHESTRATOR_RETRY_BACKOFF_SECONDS: "0.2",
    },
  }));

  it("takes its run with it; the retry waits for the restarted host and the side effect happens once", async () => {
    const { conductor } = setup;
    const { client } = conductor;
    const ws = path.join(conductor.dataDir, "agents", "agent-1", "workspace");
    const { task } = await client.submitTask({
      spec: spec({
        maxAttempts: 2,
        allowedTools: ["Bash"],
        prompt: scripted([
          { bash: "touch started-$$; sleep 4; echo deployed >> deployed.txt" },
          { text: "deployed" },
        ]),
      }),
    });
    const id = task!.id;
    await waitForState(client, id, TaskState.RUNNING);
    // The first attempt's deploy step is under way.
    await eventually(
      async () =>
        existsSync(ws) && readdirSync(ws).some((f) => f.startsWith("started-")) ? true : undefined,
      "the first attempt's deploy step",
    );
    await conductor.processes[0]!.kill9();
    // The host is gone and cannot confirm anything: the attempt is not retried.
    expect((await client.getTask({ id })).task!.state).toBe(TaskState.RUNNING);
    await conductor.restartAgentHost();
    const ended = await waitForEnd(client, id);
    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
    expect(ended.attempts).toBe(2);
    // The retry slept 4 s too: had the first attempt lived on, it would have deployed by now.
    expect(readFileSync(path.join(ws, "deployed.txt"), "utf8")).toBe("deployed\n");
    const reasons: string[] = [];
    for await (const { event } of client.watchTask({ id })) {
      if (event?.kind.case === "stateChange") reasons.push(event.kind.value.reason);
    }
    expect(
      reasons.some((r) => /waiting for it to confirm/.test(r)),
      reasons.join("\n"),
    ).toBe(true);
  });

  it("a resumed attempt lost with its host: the next resumes the same session, and the task keeps its checks and spend", async () => {
    const { conductor } = setup;
    const { client } = conductor;
    const ws = path.join(conductor.dataDir, "agents", "agent-1", "workspace");
    const usage = { usage: { input_tokens: 10, output_tokens: 100 } };
    const { task } = await client.submitTask({
      spec: spec({
        maxAttempts: 3,
        allowedTools: ["Bash"],
        checks: [{ command: "grep -qx good value.txt" }],
        prompt: scripted([
          { write: { path: "value.txt", content: "bad\n" }, ...usage },
          { text: "wrote the value", ...usage },
          // Attempt 2, resumed: its host is killed while this runs.
          { bash: "test -e hung || { touch hung; sleep 1000; }", ...usage },
          { write: { path: "value.txt", content: "good\n" }, ...usage },
          { text: "fixed the value", ...usage },
        ]),
      }),
    });
    const id = task!.id;
    await eventually(
      async () => (existsSync(path.join(ws, "hung")) ? true : undefined),
      "attempt 2 under way",
    );
    await conductor.processes[0]!.kill9();
    await conductor.restartAgentHost();
    const done = await waitForEnd(client, id);
    expect(done.state, done.result?.error).toBe(TaskState.SUCCEEDED);
    expect(done.attempts).toBe(3);
    const sessions: string[] = [];
    for await (const { event } of client.watchTask({ id })) {
      const k = event!.kind;
      if (k.case !== "output" || k.value.type !== "system") continue;
      const line = JSON.parse(k.value.rawJson) as { subtype?: string; session_id?: string };
      if (line.subtype === "init") sessions.push(line.session_id!);
    }
    expect(sessions).toEqual(Array(3).fill(sessions[0]));
    // Attempt 1's failed check is still in the task's record, and what attempts 1 and 3 spent:
    // two model requests, then three (attempt 2's went with its host).
    expect(done.result!.checks.map((c) => [c.attempt, c.passed])).toEqual([
      [1, false],
      [3, true],
    ]);
    expect(done.result!.usage!.outputTokens).toBe(500n);
  });
});
