import { describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import {
  processesWith,
  scripted,
  spec,
  testRuntimes,
  waitForEnd,
  waitForState,
} from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

/** Nothing acknowledged is lost when the Orchestrator dies with SIGKILL. */
describe.each(testRuntimes())("restart after SIGKILL on the %s runtime", (runtime) => {
  const setup = useConductor(() => ({ agents: 2, runtime }));

  it("keeps every acknowledged task and ends each exactly once", { timeout: 120_000 }, async () => {
    const { client } = setup.conductor;
    const slow = (name: string) =>
      scripted([
        { write: { path: `${name}.txt`, content: name }, delay_ms: 1500 },
        { text: `${name} done` },
      ]);
    // Two running tasks: one may be retried, one may not; three more queued behind them.
    const retried = (
      await client.submitTask({ spec: spec({ prompt: slow("r"), maxAttempts: 2, priority: 5 }) })
    ).task!;
    const single = (
      await client.submitTask({ spec: spec({ prompt: slow("s"), maxAttempts: 1, priority: 5 }) })
    ).task!;
    const queued = [];
    for (const name of ["q1", "q2", "q3"]) {
      queued.push(
        (await client.submitTask({ spec: spec({ prompt: scripted([{ text: `${name} done` }]) }) }))
          .task!,
      );
    }
    await waitForState(client, retried.id, TaskState.RUNNING);
    await waitForState(client, single.id, TaskState.RUNNING);

    await setup.conductor.processes[0]!.kill9();
    await setup.conductor.restart();

    const after = await Promise.all(
      [retried, single, ...queued].map((t) => waitForEnd(client, t.id)),
    );
    const [r, s, ...q] = after;
    expect(r!.state).toBe(TaskState.SUCCEEDED);
    expect(r!.attempts).toBe(2);
    expect(s!.state).toBe(TaskState.FAILED);
    expect(s!.result?.error).toMatch(/interrupted: the orchestrator stopped during attempt 1 of 1/);
    for (const t of q) {
      expect(t.state).toBe(TaskState.SUCCEEDED);
      expect(t.attempts).toBe(1);
    }
    // Each task has exactly one recorded result.
    for (const t of after) {
      let results = 0;
      for await (const { event } of client.watchTask({ id: t.id }))
        if (event?.kind.case === "result") results++;
      expect(results, t.id).toBe(1);
    }
    // The CLIs of the killed process were reaped on restart.
    expect(processesWith(`CONDUCTOR_TASK_ID=${single.id}`)).toEqual([]);
    const { tasks } = await client.listTasks({});
    expect(tasks).toHaveLength(5);
  });
});
