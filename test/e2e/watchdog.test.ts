import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { resolveClaudePath } from "../../services/shared/claude-path.ts";
import {
  eventually,
  ms,
  processesMatching,
  processesWith,
  scripted,
  spec,
  waitForEnd,
} from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

/** The watchdog: a CLI that lingers after its result, or goes silent, is ended. */
describe("the run watchdog", () => {
  let dir = "";
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const setup = useConductor(() => {
    // A CLI that hangs after printing its result: the real CLI, then a process that never exits.
    dir = mkdtempSync(path.join(tmpdir(), "conductor-hang-"));
    chmodSync(dir, 0o755); // the sandbox's user runs the wrapper
    const wrapper = path.join(dir, "claude-then-hang");
    // A run that wrote a file `linger` into its workspace stays 5 s after the TERM that ends it.
    const linger = `trap 'if [ -e linger ]; then rm -f linger; sleep 5; fi; exit 0' TERM`;
    writeFileSync(
      wrapper,
      `#!/bin/sh\n${linger}\n"${resolveClaudePath("")}" "$@"\nexec sleep 4732\n`,
    );
    chmodSync(wrapper, 0o755);
    return {
      agents: 2,
      env: {
        CONDUCTOR_AGENT_CLAUDE_PATH: wrapper,
        // The wrapper's folder is in the sandbox (the CLI's folder); the real CLI's too.
        CONDUCTOR_RUNTIME_READ_ONLY_PATHS: path.dirname(resolveClaudePath("")),
        // Long enough for a CLI to start on a loaded machine, short beside the 30 s silence below.
        CONDUCTOR_AGENT_IDLE_TIMEOUT_SECONDS: "10",
        // Far beyond the test's bounds: the run ends at its result line, not after this.
        CONDUCTOR_AGENT_RESULT_GRACE_SECONDS: "600",
      },
    };
  });

  it("records the outcome when the result line arrives though the CLI lingers, and ends it all", async () => {
    const { client } = setup.conductor;
    // The CLI hangs after its result (the wrapper), and a child of the agent's holds its stdout.
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([
          { bash: "sleep 4731 > /proc/$PPID/fd/1 2>&1 < /dev/null & echo started" },
          { text: "all done" },
        ]),
        allowedTools: ["Bash"],
      }),
    });
    const times = { result: NaN, ended: NaN };
    const signal = AbortSignal.timeout(60_000);
    for await (const { event } of client.watchTask({ id: task!.id }, { signal })) {
      if (event?.kind.case === "output" && event.kind.value.type === "result")
        times.result = ms(event.time);
      if (event?.kind.case === "stateChange" && event.kind.value.state === TaskState.SUCCEEDED)
        times.ended = ms(event.time);
    }
    const ended = (await client.getTask({ id: task!.id })).task!;
    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
    expect(ended.result?.text).toBe("all done");
    // Neither the CLI's own exit (never) nor the result grace (600 s) was waited for...
    expect(times.ended - times.result).toBeLessThan(5_000);
    // ...and the run was ended after (its outcome is told first).
    await eventually(
      async () =>
        processesWith(`CONDUCTOR_TASK_ID=${task!.id}`).length === 0 &&
        processesMatching(/^sleep 473[12]$/).length === 0
          ? true
          : undefined,
      "the run's end",
      10_000,
    );
  });

  it("records the outcome at the result line, before the run has ended (which comes after)", async () => {
    const { client } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([{ bash: "touch linger" }, { text: "lingered" }]),
        allowedTools: ["Bash"],
      }),
    });
    const id = task!.id;
    const times = { result: NaN, ended: NaN };
    const signal = AbortSignal.timeout(60_000);
    for await (const { event } of client.watchTask({ id }, { signal })) {
      if (event?.kind.case === "output" && event.kind.value.type === "result")
        times.result = ms(event.time);
      if (event?.kind.case === "stateChange" && event.kind.value.state === TaskState.SUCCEEDED)
        times.ended = ms(event.time);
    }
    const ended = (await client.getTask({ id })).task!;
    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
    expect(ended.result?.text).toBe("lingered");
    // The run, which ignores its TERM for 5 s, was still there when its outcome was seen.
    expect(processesWith(`CONDUCTOR_TASK_ID=${id}`)).not.toEqual([]);
    expect(times.ended - times.result).toBeLessThan(2_000);
    // Its agent shows idle and takes the next task, which starts once the run is ended: with
    // two agents, two tasks now both succeed.
    const next = await Promise.all(
      [0, 1].map(async () => {
        const { task: t } = await client.submitTask({ spec: spec({ prompt: "ok" }) });
        return waitForEnd(client, t!.id);
      }),
    );
    expect(next.map((t) => TaskState[t.state])).toEqual(["SUCCEEDED", "SUCCEEDED"]);
    // It ended by itself after its 5 s; the grace of 600 s was not waited for.
    await eventually(
      async () => (processesWith(`CONDUCTOR_TASK_ID=${id}`).length === 0 ? true : undefined),
      "the lingering run's end",
    );
  });

  it("fails a run that goes silent, with the reason", async () => {
    const { client } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({ prompt: scripted([{ text: "too late", delay_ms: 30_000 }]) }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(ended.state).toBe(TaskState.FAILED);
    expect(ended.result?.error).toMatch(/printed nothing for 10 s/);
    expect(processesWith(`CONDUCTOR_TASK_ID=${task!.id}`)).toEqual([]);
  });
});
