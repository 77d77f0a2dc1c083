import { describe, expect, it } from "vitest";
import { ErrorKind, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { processesWith, scripted, spec, testRuntimes, waitForEnd } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

/** How runs end: cancel, timeout, API errors and retries, on every runtime. */
describe.each(testRuntimes())("task outcomes on the %s runtime", (runtime) => {
  const setup = useConductor(() => ({
    agents: 3,
    runtime,
    env: {
      CONDUCTOR_ORCHESTRATOR_RETRY_BACKOFF_SECONDS: "0.2",
      // The CLI's own API retries would hide a failing attempt from Conductor's retry policy.
      CONDUCTOR_AGENT_MAX_API_RETRIES: "0",
    },
  }));

  it("cancels a running task and leaves no process behind", async () => {
    const { client } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([{ bash: "tail -f /dev/null" }, { text: "never" }]),
        allowedTools: ["Bash"],
      }),
    });
    // Cancel once the agent has called Bash (a process tree of CLI + shell + sleep to end).
    for await (const { event } of client.watchTask({ id: task!.id })) {
      if (
        event?.kind.case === "output" &&
        event.kind.value.toolCalls.some((t) => t.name === "Bash")
      )
        break;
    }
    const marker = `CONDUCTOR_TASK_ID=${task!.id}`;
    expect(processesWith(marker).length).toBeGreaterThan(0);
    const { task: cancelled } = await client.cancelTask({ id: task!.id });
    expect(cancelled!.state).toBe(TaskState.CANCELLED);
    expect(ErrorKind[cancelled!.result!.errorKind]).toBe("CANCELLED");
    expect(processesWith(marker)).toEqual([]);
  });

  it("ends a task over its timeout as TIMED_OUT", async () => {
    const { client } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([{ bash: "tail -f /dev/null" }, { text: "never" }]),
        allowedTools: ["Bash"],
        timeoutSeconds: 2,
      }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(ended.state).toBe(TaskState.TIMED_OUT);
    expect(ended.result?.error).toMatch(/timeout of 2 s/);
    expect(ErrorKind[ended.result!.errorKind]).toBe("TIMEOUT");
    expect(processesWith(`CONDUCTOR_TASK_ID=${task!.id}`)).toEqual([]);
  });

  it("fails a task on a model API error, with the error text, and does not retry a 400", async () => {
    const { client } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({
        maxAttempts: 3,
        prompt: scripted([
          {
            error: {
              status: 400,
              type: "invalid_request_error",
              message: "scripted failure: prompt rejected",
            },
          },
        ]),
      }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(ended.state).toBe(TaskState.FAILED);
    expect(ended.attempts).toBe(1);
    expect(ended.result?.error).toMatch(/scripted failure: prompt rejected/);
    expect(ended.result?.error).toMatch(/not retried \(attempt 1 of 3\)/);
    expect(ErrorKind[ended.result!.errorKind]).toBe("INVALID_REQUEST");
  });

  it.each([
    [500, "api_error"],
    [529, "overloaded_error"],
  ])("retries an attempt failed by an HTTP %i when max_attempts allows", async (status, type) => {
    const { client } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({
        maxAttempts: 3,
        prompt: scripted([
          {
            id: `retry-${status}-${Date.now()}`,
            fail_times: 1,
            error: { status, type, message: "scripted failure: try again" },
            text: "second time lucky",
          },
        ]),
      }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(ended.state).toBe(TaskState.SUCCEEDED);
    expect(ended.attempts).toBe(2);
    expect(ended.result?.text).toBe("second time lucky");
    const reasons: string[] = [];
    for await (const { event } of client.watchTask({ id: task!.id })) {
      if (event?.kind.case === "stateChange") reasons.push(event.kind.value.reason);
    }
    expect(reasons.some((r) => /attempt 1 of 3 failed: .*try again.*retrying/.test(r))).toBe(true);
    // The failed attempt said what kind of failure it was.
    expect(reasons.some((r) => r.endsWith("(API_ERROR)"))).toBe(true);
  });
});
