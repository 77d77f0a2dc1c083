// Task dependencies (TaskSpec.depends_on): order, results carried into prompts, failure
// cascades, refusals at submit, and a chain that survives the Orchestrator's SIGKILL.
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { ErrorKind, TaskState, type Task } from "../../gen/conductor/v1/task_pb.js";
import { ms, scripted, spec, testRuntimes, waitForEnd, waitForState } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

describe("task dependencies", () => {
  const setup = useConductor(() => ({
    agents: 3,
    runtime: testRuntimes()[0]!,
    env: { CONDUCTOR_AGENT_MAX_API_RETRIES: "0" },
  }));

  /** Submits a task whose scripted answer is `text` (which may hold {{deps.ID.result}}). */
  const submit = async (text: string, dependsOn: string[] = [], slow = false): Promise<Task> => {
    const steps = slow
      ? [{ write: { path: "slow.txt", content: "x" }, delay_ms: 1500 }, { text }]
      : [{ text }];
    const { task } = await setup.conductor.client.submitTask({
      spec: spec({ prompt: scripted(steps), dependsOn, maxAttempts: 2 }),
    });
    return task!;
  };

  it("runs a chain A → B → C in order, each prompt carrying its dependency's result", async () => {
    const { client } = setup.conductor;
    const a = await submit("alpha-42", [], true);
    const b = await submit(`beta after {{deps.${a.id}.result}}`, [a.id]);
    const c = await submit(`gamma after {{deps.${b.id}.result}}`, [b.id]);
    await waitForState(client, a.id, TaskState.RUNNING);
    // Agents are free, yet the dependents wait.
    for (const t of [b, c])
      expect(TaskState[(await client.getTask({ id: t.id })).task!.state]).toBe("QUEUED");
    const [ea, eb, ec] = await Promise.all([a, b, c].map((t) => waitForEnd(client, t.id)));
    expect([ea, eb, ec].map((t) => TaskState[t!.state])).toEqual([
      "SUCCEEDED",
      "SUCCEEDED",
      "SUCCEEDED",
    ]);
    expect(ec!.result!.text).toBe("gamma after beta after alpha-42");
    expect(ms(eb!.startTime)).toBeGreaterThanOrEqual(ms(ea!.endTime));
    expect(ms(ec!.startTime)).toBeGreaterThanOrEqual(ms(eb!.endTime));
  });

  it("cancels the whole chain when a dependency fails, naming it", async () => {
    const { client } = setup.conductor;
    const { task: a } = await client.submitTask({
      spec: spec({
        prompt: scripted([
          { error: { status: 400, type: "invalid_request_error", message: "scripted refusal" } },
        ]),
        maxAttempts: 3,
      }),
    });
    const b = await submit("never b", [a!.id]);
    const c = await submit("never c", [b.id]);
    const [ea, eb, ec] = await Promise.all([a!, b, c].map((t) => waitForEnd(client, t.id)));
    expect(TaskState[ea!.state]).toBe("FAILED");
    for (const t of [eb!, ec!]) {
      expect(TaskState[t.state]).toBe("CANCELLED");
      expect(ErrorKind[t.result!.errorKind]).toBe("DEPENDENCY");
      expect(t.result!.error).toContain(`${a!.id} ended FAILED`);
      expect(t.attempts).toBe(0);
    }
    expect(ec!.result!.error).toBe(
      `dependency ${b.id} ended CANCELLED (${a!.id} ended FAILED), so this task cannot run`,
    );
    // A task depending on one that already failed ends at once.
    const late = await submit("never late", [a!.id]);
    expect(TaskState[late.state]).toBe("CANCELLED");
    expect(late.result!.error).toContain(`${a!.id} ended FAILED`);
  });

  it("refuses an unknown dependency and a result placeholder it does not depend on", async () => {
    const { client } = setup.conductor;
    await expect(
      client.submitTask({ spec: spec({ prompt: "x", dependsOn: ["no-such-task"] }) }),
    ).rejects.toMatchObject({ code: Code.NotFound, rawMessage: /no-such-task/ });
    const a = await submit("a");
    await expect(
      client.submitTask({ spec: spec({ prompt: "use {{deps.other.result}}", dependsOn: [a.id] }) }),
    ).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: /\{\{deps\.other\.result\}\}, but depends_on does not name that task/,
    });
    await expect(
      client.submitTask({ spec: spec({ prompt: "x", dependsOn: [a.id, a.id] }) }),
    ).rejects.toMatchObject({ code: Code.InvalidArgument, rawMessage: /names .* twice/ });
  });

  it("completes a chain across a SIGKILL of the Orchestrator", { timeout: 120_000 }, async () => {
    const { client } = setup.conductor;
    const a = await submit("first", [], true);
    const b = await submit(`second after {{deps.${a.id}.result}}`, [a.id]);
    const c = await submit(`third after {{deps.${b.id}.result}}`, [b.id]);
    await waitForState(client, a.id, TaskState.RUNNING);
    await setup.conductor.processes[0]!.kill9();
    await setup.conductor.restart();
    const ended = await waitForEnd(client, c.id, 90_000);
    expect(TaskState[ended.state]).toBe("SUCCEEDED");
    expect(ended.result!.text).toBe("third after second after first");
  });
});
