import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { ms, scripted, spec, testRuntimes, waitForEnd } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

/** The spine's main promise: several agents run tasks in parallel, by priority, each in its own workspace. */
const cases: { runtime: string; mode: "up" | "split" }[] = testRuntimes().map((runtime) => ({
  runtime,
  mode: "up",
}));
cases.push({ runtime: "process", mode: "split" });

describe.each(cases)(
  "conductor $mode with 3 agents on the $runtime runtime",
  ({ runtime, mode }) => {
    const setup = useConductor(() => ({ agents: 3, mode, runtime }));

    // Podman execs are slow (about 35 s for this on a quiet 2-CPU machine): room to spare.
    it(
      "runs 6 tasks, at most 3 at once, a later high-priority task before queued low ones",
      { timeout: 120_000 },
      async () => {
        const { client } = setup.conductor;
        const names = ["a", "b", "c", "d", "e", "f"];
        const submitted = await Promise.all(
          names.map((name, i) =>
            client.submitTask({
              spec: spec({
                prompt: scripted([
                  { write: { path: `out-${name}.txt`, content: `task ${name}` }, delay_ms: 700 },
                  { text: `wrote out-${name}.txt` },
                ]),
                priority: i === 5 ? 9 : 0,
              }),
            }),
          ),
        );
        const ids = submitted.map((r) => r.task!.id);
        const tasks = await Promise.all(ids.map((id) => waitForEnd(client, id, 110_000)));

        const { agents } = await client.listAgents({});
        const workspaceOf = new Map(agents.map((a) => [a.id, a.workspace]));
        tasks.forEach((task, i) => {
          expect(task.state, task.result?.error).toBe(TaskState.SUCCEEDED);
          expect(task.result?.text).toBe(`wrote out-${names[i]}.txt`);
          const file = path.join(workspaceOf.get(task.agentId)!, `out-${names[i]}.txt`);
          expect(readFileSync(file, "utf8")).toBe(`task ${names[i]}`);
          for (const [other, ws] of workspaceOf) {
            if (other !== task.agentId)
              expect(existsSync(path.join(ws, `out-${names[i]}.txt`))).toBe(false);
          }
        });

        // Never more than 3 running at once, and never two at once on one agent.
        const spans = tasks.map((t) => ({
          agent: t.agentId,
          start: ms(t.startTime),
          end: ms(t.endTime),
        }));
        let peak = 0;
        for (const s of spans) {
          const overlapping = spans.filter((o) => o.start <= s.start && o.end > s.start);
          peak = Math.max(peak, overlapping.length);
          expect(new Set(overlapping.map((o) => o.agent)).size).toBe(overlapping.length);
        }
        expect(peak).toBeLessThanOrEqual(3);
        expect(peak).toBeGreaterThan(1);

        // The priority-9 task, submitted last, started before the low-priority tasks that had to queue.
        const byStart = [...tasks].sort((x, y) => ms(x.startTime) - ms(y.startTime));
        const urgent = tasks[5]!;
        const queuedLow = byStart.slice(3).filter((t) => t.id !== urgent.id);
        for (const low of queuedLow)
          expect(ms(urgent.startTime)).toBeLessThanOrEqual(ms(low.startTime));
        expect(byStart.slice(0, 4).map((t) => t.id)).toContain(urgent.id);

        const stats = await client.getStats({});
        expect(stats.tasksByState["TASK_STATE_SUCCEEDED"]).toBe(6n);
        expect(stats.outputTokensTotal).toBeGreaterThan(0n);
      },
    );
  },
);
