import { context, createContextKey, SpanStatusCode, trace, type Tracer } from "@opentelemetry/api";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import type { RuntimeBackend } from "../../plugins/runtime.ts";
import {
  ATTR_AGENT_ID,
  ATTR_NODE,
  ATTR_OUTCOME,
  ATTR_RUNTIME,
  ATTR_TASK_ID,
  SPAN_CLI_RUN,
  SPAN_CONTAINER_EXEC,
} from "../shared/tracing.ts";
import type { RunOutcome } from "./run.ts";

/** What the AgentHost tells an observer; it never changes what the AgentHost does. */
export interface AgentHostObserver {
  /** Runs one task's CLI run (from exec to outcome) and learns how it ended. */
  cliRun(
    r: { taskId: string; agentId: string },
    run: () => Promise<RunOutcome>,
  ): Promise<RunOutcome>;
}

/** Where the AgentHost's telemetry goes; either may be absent. */
export interface AgentHostTelemetryOptions {
  tracer?: Tracer | undefined;
  registry?: Registry | undefined;
  nodeId: string;
}

/** The run a context belongs to, so an exec's span names its task. */
const RUN = createContextKey("conductor.agent-host.run");

const AGENT_STATES = [
  AgentState.STARTING,
  AgentState.IDLE,
  AgentState.BUSY,
  AgentState.STOPPING,
  AgentState.FAILED,
];

/** A CLI-run span per task run, child of the RunTask call, with the run's outcome. */
export function createAgentHostObserver(
  opts: AgentHostTelemetryOptions & { runtime: string },
): AgentHostObserver {
  const tracer = opts.tracer;
  return {
    cliRun(r, run) {
      if (!tracer) return run();
      const span = tracer.startSpan(SPAN_CLI_RUN, {
        attributes: {
          [ATTR_TASK_ID]: r.taskId,
          [ATTR_AGENT_ID]: r.agentId,
          [ATTR_NODE]: opts.nodeId,
          [ATTR_RUNTIME]: opts.runtime,
        },
      });
      const ctx = trace.setSpan(context.active(), span).setValue(RUN, r);
      return context.with(ctx, run).then(
        (outcome) => {
          span.setAttribute(ATTR_OUTCOME, (TaskState[outcome.state] ?? "").toLowerCase());
          if (outcome.state === TaskState.FAILED || outcome.state === TaskState.TIMED_OUT)
            span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.result.error });
          span.end();
          return outcome;
        },
        (e: unknown) => {
          span.setAttribute(ATTR_OUTCOME, "error");
          span.setStatus({ code: SpanStatusCode.ERROR, message: String(e) });
          span.end();
          throw e;
        },
      );
    },
  };
}

/**
 * Wraps a runtime backend so that sandbox starts and failures are counted and every exec
 * gets a "container exec" span and a latency sample. Every other member passes through, so
 * the wrapper keeps up with the plugin contract.
 */
export function observeBackend(
  backend: RuntimeBackend,
  opts: AgentHostTelemetryOptions,
): RuntimeBackend {
  const { tracer, registry } = opts;
  if (!tracer && !registry) return backend;
  const m = registry ? backendMetrics(registry) : undefined;
  const runtime = { runtime: backend.name };
  const overrides: Partial<RuntimeBackend> = {
    async create(spec) {
      try {
        return await backend.create(spec);
      } catch (e) {
        m?.startFailures.inc(runtime);
        throw e;
      }
    },
    async start(h) {
      try {
        await backend.start(h);
        m?.starts.inc(runtime);
      } catch (e) {
        m?.startFailures.inc(runtime);
        throw e;
      }
    },
    async exec(h, req) {
      const started = performance.now();
      const run = context.active().getValue(RUN) as { taskId: string } | undefined;
      const span = tracer?.startSpan(SPAN_CONTAINER_EXEC, {
        attributes: {
          [ATTR_TASK_ID]: run?.taskId ?? "",
          [ATTR_AGENT_ID]: h.agentId,
          [ATTR_NODE]: opts.nodeId,
          [ATTR_RUNTIME]: backend.name,
        },
      });
      try {
        const execution = await backend.exec(h, req);
        span?.setAttribute(ATTR_OUTCOME, "started");
        return execution;
      } catch (e) {
        span?.setAttribute(ATTR_OUTCOME, "failed");
        span?.setStatus({ code: SpanStatusCode.ERROR, message: String(e) });
        throw e;
      } finally {
        m?.execSeconds.observe(runtime, (performance.now() - started) / 1000);
        span?.end();
      }
    },
  };
  return new Proxy(backend, {
    get(target, prop, receiver) {
      const own = (overrides as Record<PropertyKey, unknown>)[prop];
      if (own !== undefined) return own;
      const value: unknown = Reflect.get(target, prop, receiver);
      return typeof value === "function" ? (value as () => unknown).bind(target) : value;
    },
  });
}

function backendMetrics(registry: Registry) {
  const registers = [registry];
  return {
    starts: new Counter({
      name: "conductor_container_starts_total",
      help: "Agent sandboxes (containers, or folders on the process runtime) started, by runtime.",
      labelNames: ["runtime"],
      registers,
    }),
    startFailures: new Counter({
      name: "conductor_container_start_failures_total",
      help: "Agent sandboxes that could not be created or started, by runtime.",
      labelNames: ["runtime"],
      registers,
    }),
    execSeconds: new Histogram({
      name: "conductor_container_exec_seconds",
      help: "Time to start the CLI inside an agent's sandbox (the runtime's exec), by runtime.",
      labelNames: ["runtime"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
  };
}

/** Registers the gauge of this host's agents by state, read at scrape time. */
export function registerAgentGauge(registry: Registry, agents: () => Agent[]): void {
  new Gauge({
    name: "conductor_agents",
    help: "This AgentHost's agents, by state.",
    labelNames: ["state"],
    registers: [registry],
    collect() {
      const counts = new Map<AgentState, number>();
      for (const a of agents()) counts.set(a.state, (counts.get(a.state) ?? 0) + 1);
      for (const s of AGENT_STATES)
        this.set({ state: (AgentState[s] ?? "").toLowerCase() }, counts.get(s) ?? 0);
    },
  });
}
