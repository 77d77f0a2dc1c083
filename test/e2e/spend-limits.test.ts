// Fleet-wide spend limits (orchestrator.spend_limits): a reached limit holds the tasks it covers
// QUEUED, saying why in GetTask and `conductor get`, and lets them start when its window allows;
// spend is kept across a restart. Real CLI against the fake model, process runtime.
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { TaskState, type Task } from "../../gen/conductor/v1/task_pb.js";
import { ms, ROOT, scripted, spec, waitForEnd } from "../harness.ts";
import { useConductor, type ConductorSetup } from "./use-conductor.ts";

/** One turn that costs $0.045 (Sonnet's $3/$15 per million). */
const COSTLY = { input_tokens: 10_000, output_tokens: 1_000 };
const CHEAP = { input_tokens: 10, output_tokens: 1 };

/** Submits a one-turn task with these labels, costly or cheap. */
async function submit(
  setup: ConductorSetup,
  labels: Record<string, string>,
  usage: typeof COSTLY,
): Promise<Task> {
  const { task } = await setup.conductor.client.submitTask({
    spec: spec({
      prompt: scripted([{ text: "spent", usage }], `Spend, ${JSON.stringify(labels)}.`),
      model: "claude-sonnet-4-5",
      labels,
    }),
  });
  return task!;
}

const get = async (setup: ConductorSetup, id: string) =>
  (await setup.conductor.client.getTask({ id })).task!;

/** `conductor get ID` as a person sees it. */
async function conductorGet(setup: ConductorSetup, id: string): Promise<string> {
  const socket = path.join(setup.conductor.socketDir, "orchestrator.sock");
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [path.join(ROOT, "bin", "conductor.js"), "get", id],
    { env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", CONDUCTOR_SOCKET: socket } },
  );
  return stdout;
}

const REASON =
  /^spend limit \$0\.0100 per (\d+) s( for labels team=a)? reached \(\$0\.0450 in the last \1 s\); starts when the window allows, about \d\d:\d\d:\d\d UTC$/;

describe("a spend limit for labels team=a", () => {
  const WINDOW_S = 20;
  const setup = useConductor(() => ({
    agents: 2,
    runtime: "process",
    env: {
      CONDUCTOR_AGENT_MAX_API_RETRIES: "0",
      CONDUCTOR_ORCHESTRATOR_SPEND_LIMITS: `[{usd_per_hour: 0.01, labels: {team: a}, window_seconds: ${WINDOW_S}}]`,
    },
  }));

  it(
    "holds tasks QUEUED and releases them; tasks it does not cover run",
    {
      timeout: 120_000,
    },
    async () => {
      const { client } = setup.conductor;
      const first = await waitForEnd(client, (await submit(setup, { team: "a" }, COSTLY)).id);
      expect(TaskState[first.state]).toBe("SUCCEEDED");
      expect(first.result!.costUsd).toBeCloseTo(0.045, 9);
      // Its spend was recorded as it ended: $0.045 of $0.01 in the window.
      const held = await submit(setup, { team: "a", more: "x" }, CHEAP);
      const others = await Promise.all([
        submit(setup, { team: "b" }, CHEAP),
        submit(setup, {}, CHEAP),
      ]);
      for (const t of others)
        expect(TaskState[(await waitForEnd(client, t.id)).state]).toBe("SUCCEEDED");
      // Agents are free, yet it waits, saying why.
      const waiting = await get(setup, held.id);
      expect(TaskState[waiting.state]).toBe("QUEUED");
      expect(waiting.attempts).toBe(0);
      expect(waiting.queueReason).toMatch(REASON);
      expect(waiting.queueReason).toContain(`per ${WINDOW_S} s for labels team=a`);
      const text = await conductorGet(setup, held.id);
      expect(text).toMatch(
        new RegExp(
          `^held +spend limit \\$0\\.0100 per ${WINDOW_S} s for labels team=a reached`,
          "m",
        ),
      );
      // Prometheus shows the limit and its window's spend.
      const metrics = await (
        await fetch(String(setup.conductor.processes[0]!.ready["metrics"]))
      ).text();
      expect(metrics).toContain('conductor_spend_limit_usd{limit="team=a"} 0.01');
      expect(metrics).toMatch(/^conductor_spend_window_usd\{limit="team=a"\} 0\.045\d*$/m);
      // Tasks it does not cover say nothing of it.
      expect((await get(setup, others[0].id)).queueReason).toBe("");
      // Released when the window allows (no one asks again): once $0.045 is older than it.
      const ended = await waitForEnd(client, held.id, 60_000);
      expect(TaskState[ended.state]).toBe("SUCCEEDED");
      expect(ended.queueReason).toBe("");
      expect(ms(ended.startTime)).toBeGreaterThanOrEqual(ms(first.endTime) + WINDOW_S * 1000);
      expect(ms(ended.startTime)).toBeLessThan(ms(first.endTime) + WINDOW_S * 1000 + 10_000);
    },
  );
});

describe("a spend limit on the whole fleet", () => {
  const WINDOW_S = 30;
  const setup = useConductor(() => ({
    agents: 2,
    runtime: "process",
    env: {
      CONDUCTOR_AGENT_MAX_API_RETRIES: "0",
      CONDUCTOR_ORCHESTRATOR_SPEND_LIMITS: `[{usd_per_hour: 0.01, window_seconds: ${WINDOW_S}}]`,
    },
  }));

  it(
    "holds every task, across a SIGKILL of the Orchestrator, until the window allows",
    {
      timeout: 120_000,
    },
    async () => {
      const { client } = setup.conductor;
      const first = await waitForEnd(client, (await submit(setup, {}, COSTLY)).id);
      expect(TaskState[first.state]).toBe("SUCCEEDED");
      const held = await submit(setup, { team: "z" }, CHEAP);
      expect((await get(setup, held.id)).queueReason).toMatch(REASON);
      await setup.conductor.processes[0]!.kill9();
      await setup.conductor.restart();
      // The spend was stored: after the restart it still holds the task (and the start time
      // below shows it held it all along).
      const after = await get(setup, held.id);
      expect(TaskState[after.state]).toBe("QUEUED");
      expect(after.attempts).toBe(0);
      expect(after.queueReason).toMatch(REASON);
      const ended = await waitForEnd(client, held.id, 60_000);
      expect(TaskState[ended.state]).toBe("SUCCEEDED");
      expect(ms(ended.startTime)).toBeGreaterThanOrEqual(ms(first.endTime) + WINDOW_S * 1000);
    },
  );
});
