import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import { ROOT, scripted, spec, startConductor, waitForEnd, type Conductor } from "../harness.ts";
import { promtoolCheckMetrics, startPrometheus, type Prometheus } from "./prometheus.ts";

const TASKS = 5;
/** Output tokens of the task retried once: its two attempts' four model requests. */
const RETRIED_OUTPUT = 12;
const AGENTS = 2;
/** The scrape job of a service process, named as in deploy/prometheus/prometheus.yml. */
const jobOf = (command: string) =>
  command === "up" ? "conductor-orchestrator" : `conductor-${command}`;

/** Metric names a /metrics body declares (its # TYPE lines). */
export function declaredMetrics(body: string): Set<string> {
  return new Set([...body.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
}

/**
 * Debian's real Prometheus scrapes every service of a live Conductor while it runs tasks;
 * its API shows the series the run implies, and promtool finds nothing to say about them.
 */
describe.each(["up", "split"] as const)(
  "metrics of conductor %s, scraped by Prometheus",
  (mode) => {
    let model: FakeModel;
    let conductor: Conductor;
    let prometheus: Prometheus;
    const bodies = new Map<string, string>();
    let stats: { inputTokensTotal: bigint; outputTokensTotal: bigint; costUsdTotal: number };

    beforeAll(async () => {
      model = await startFakeModel();
      conductor = await startConductor({ agents: AGENTS, modelUrl: model.url, mode });
      const targets = conductor.processes.map((p) => ({
        job: jobOf(String(p.ready["ready"])),
        url: String(p.ready["metrics"]),
      }));
      for (const t of targets) expect(t.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      prometheus = await startPrometheus(targets);
      await prometheus.waitFor(
        "up",
        (r) => r.length === targets.length && r.every((s) => s.value === 1),
      );

      const { client } = conductor;
      const ids = await Promise.all(
        Array.from({ length: TASKS }, async (_, i) => {
          const prompt = scripted([
            // code_review answers with findings, through the CLI's StructuredOutput tool.
            {
              tool: { name: "StructuredOutput", input: { findings: [], summary: `task ${i}` } },
              usage: { input_tokens: 100 + i, output_tokens: 7 },
            },
          ]);
          return (
            await client.submitTask({
              spec: spec({ prompt, type: "code_review", priority: i % 3 }),
            })
          ).task!.id;
        }),
      );
      // One more, of the generic type: its check fails attempt 1, and attempt 2 (resuming the
      // session) fixes it. Each attempt's tokens count once, as GetStats counts them.
      const step = { usage: { input_tokens: 1000, output_tokens: RETRIED_OUTPUT / 4 } };
      const { task: retried } = await client.submitTask({
        spec: spec({
          prompt: scripted([
            { write: { path: "value.txt", content: "bad\n" }, ...step },
            { text: "wrote it", ...step },
            { write: { path: "value.txt", content: "good\n" }, ...step },
            { text: "fixed it", ...step },
          ]),
          maxAttempts: 2,
          checks: [{ command: "grep -qx good value.txt" }],
        }),
      });
      for (const id of [...ids, retried!.id]) {
        const task = await waitForEnd(client, id);
        expect(task.state, task.result?.error).toBe(TaskState.SUCCEEDED);
      }
      stats = await client.getStats({});
      for (const p of conductor.processes) {
        bodies.set(
          String(p.ready["ready"]),
          await (await fetch(String(p.ready["metrics"]))).text(),
        );
      }
    });
    afterAll(async () => {
      await prometheus?.close();
      await conductor?.close();
      await model?.close();
    });

    const value = async (promql: string, expected: number) => {
      const r = await prometheus.waitFor(promql, (r) => r.length === 1 && r[0]!.value === expected);
      return r[0]!.value;
    };

    it("counts every task transition, attempt, wait and run", async () => {
      for (const state of ["queued", "scheduled", "running", "succeeded"]) {
        expect(
          await value(
            `sum(conductor_task_transitions_total{state="${state}",type="code_review"})`,
            TASKS,
          ),
        ).toBe(TASKS);
      }
      // The generic task's two attempts, and its wait before each.
      expect(await value("sum(conductor_task_attempts_total)", TASKS + 2)).toBe(TASKS + 2);
      expect(await value("sum(conductor_task_queue_wait_seconds_count)", TASKS + 2)).toBe(
        TASKS + 2,
      );
      expect(
        await value(
          'sum(conductor_task_run_duration_seconds_count{state="succeeded",type="code_review"})',
          TASKS,
        ),
      ).toBe(TASKS);
      expect(await value('sum(conductor_tasks{state="succeeded"})', TASKS + 1)).toBe(TASKS + 1);
      expect(await value("sum(conductor_queue_depth)", 0)).toBe(0);
      expect(await prometheus.query("conductor_queue_depth")).toHaveLength(11); // priorities 0–10
      expect(await value('sum(conductor_task_retries_total{type="generic"})', 1)).toBe(1);
      expect(await prometheus.query('conductor_task_retries_total{type="code_review"}')).toEqual(
        [],
      );
      expect(await prometheus.query('conductor_task_transitions_total{state="failed"}')).toEqual(
        [],
      );
    });

    it("adds up tokens and spend as GetStats does", async () => {
      const output = TASKS * 7 + RETRIED_OUTPUT;
      expect(Number(stats.outputTokensTotal)).toBe(output);
      expect(await value("sum(conductor_output_tokens_total)", output)).toBe(output);
      const input = Number(stats.inputTokensTotal);
      expect(await value('sum(conductor_input_tokens_total{model="default"})', input)).toBe(input);
      const [cost] = await prometheus.query("sum(conductor_cost_usd_total)");
      expect(cost!.value).toBeCloseTo(stats.costUsdTotal, 9);
    });

    it("counts RPCs on both sides of every boundary, by method and code", async () => {
      const handled = (side: string, service: string, method: string) =>
        `sum(conductor_rpc_${side}_handled_total{service="conductor.v1.${service}",method="${method}",code="OK"})`;
      const [submits, runs] = [TASKS + 1, TASKS + 2]; // the generic task: one submit, two runs
      expect(await value(handled("server", "OrchestratorService", "SubmitTask"), submits)).toBe(
        submits,
      );
      expect(await value(handled("server", "OrchestratorService", "GetStats"), 1)).toBe(1);
      expect(await value(handled("server", "AgentHostService", "RunTask"), runs)).toBe(runs);
      expect(await value(handled("client", "AgentHostService", "RunTask"), runs)).toBe(runs);
      expect(
        await value(
          'sum(conductor_rpc_server_handling_seconds_count{method="RunTask",rpc_type="server_streaming"})',
          runs,
        ),
      ).toBe(runs);
    });

    it("shows the agents and their sandboxes, from the AgentHost's endpoint", async () => {
      const job = mode === "up" ? "conductor-orchestrator" : "conductor-agent-host";
      expect(await value(`sum(conductor_agents{state="idle",job="${job}"})`, AGENTS)).toBe(AGENTS);
      expect(
        await value(
          `sum(conductor_container_starts_total{runtime="process",job="${job}"})`,
          AGENTS,
        ),
      ).toBe(AGENTS);
      // The generic task's two runs of the CLI and of its check.
      expect(await value("sum(conductor_container_exec_seconds_count)", TASKS + 4)).toBe(TASKS + 4);
      if (mode === "split") {
        // Each process exports what it owns.
        expect(await prometheus.query('conductor_agents{job="conductor-orchestrator"}')).toEqual(
          [],
        );
        expect(await prometheus.query('conductor_queue_depth{job="conductor-agent-host"}')).toEqual(
          [],
        );
      }
    });

    it("passes promtool check metrics on every endpoint", async () => {
      expect([...bodies.keys()]).toEqual(
        expect.arrayContaining(mode === "up" ? ["up"] : ["agent-host", "orchestrator"]),
      );
      for (const [service, body] of bodies) {
        expect(await promtoolCheckMetrics(body), service).toBe("");
      }
    });

    // Checked once, against `up`'s endpoint that serves every service's metrics.
    const upOnly = mode === "up" ? it : () => undefined;
    upOnly("names in the dashboard and the alerts only metrics that exist", () => {
      const declared = declaredMetrics([...bodies.values()].join("\n"));
      const dashboard = JSON.parse(
        readFileSync(path.join(ROOT, "deploy/grafana/conductor-dashboard.json"), "utf8"),
      ) as { panels: { targets?: { expr: string }[] }[] };
      const exprs = dashboard.panels.flatMap((p) => p.targets ?? []).map((t) => t.expr);
      exprs.push(
        ...[
          ...readFileSync(path.join(ROOT, "deploy/prometheus/alerts.yml"), "utf8").matchAll(
            /conductor_\w+/g,
          ),
        ].map((m) => m[0]),
      );
      const used = new Set(
        exprs.flatMap((e) => [...e.matchAll(/\bconductor_\w+/g)].map((m) => m[0])),
      );
      expect(used.size).toBeGreaterThan(10);
      for (const name of used) {
        const base = name.replace(/_(bucket|count|sum)$/, "");
        expect(declared.has(name) || declared.has(base), `${name} is exported`).toBe(true);
      }
    });
  },
);
