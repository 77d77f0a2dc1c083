import { context, SpanStatusCode, trace, type Span, type Tracer } from "@opentelemetry/api";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import {
  ATTR_AGENT_ID,
  ATTR_NODE,
  ATTR_OUTCOME,
  ATTR_TASK_ATTEMPT,
  ATTR_TASK_ID,
  ATTR_TASK_PRIORITY,
  ATTR_TASK_TYPE,
  contextFromTraceParent,
  currentTraceParent,
  SPAN_TASK_QUEUED,
  SPAN_TASK_SCHEDULED,
} from "../shared/tracing.ts";
import type { Attempt, AttemptEnd, OrchestratorObserver, Transition } from "./observer.ts";
import { labelsText, type SpendLimits } from "./spend-limits.ts";
import type { TaskStore } from "./store.ts";

/** Token usage and cost on a task's attempt span (OpenTelemetry's gen_ai names where they exist). */
export const ATTR_INPUT_TOKENS = "gen_ai.usage.input_tokens";
export const ATTR_OUTPUT_TOKENS = "gen_ai.usage.output_tokens";
export const ATTR_COST_USD = "conductor.cost_usd";
/** Span event on an attempt whose AgentHost was lost, with the host and the reason. */
export const EVENT_ATTEMPT_UNCONFIRMED = "agent_host_lost";
export const ATTR_AGENT_HOST = "conductor.agent_host";
export const ATTR_REASON = "conductor.reason";

/** A task state as a label value: queued, scheduled, running, succeeded, failed, cancelled, timed_out. */
export function stateLabel(state: TaskState): string {
  return (TaskState[state] ?? String(state)).toLowerCase();
}

const FINAL = new Set([
  TaskState.SUCCEEDED,
  TaskState.FAILED,
  TaskState.CANCELLED,
  TaskState.TIMED_OUT,
]);
const STATES = [
  TaskState.QUEUED,
  TaskState.SCHEDULED,
  TaskState.RUNNING,
  TaskState.SUCCEEDED,
  TaskState.FAILED,
  TaskState.CANCELLED,
  TaskState.TIMED_OUT,
];
/** Priorities a spec may have (validate.ts); the gauge shows each, zero included. */
const PRIORITIES = Array.from({ length: 11 }, (_, i) => i);

/** What the Orchestrator's observer reports to; either may be absent. */
export interface OrchestratorTelemetryOptions {
  tracer?: Tracer | undefined;
  registry?: Registry | undefined;
  /** The model label of tokens and cost when a spec names none (agent.model, or "default"). */
  defaultModel: string;
}

/**
 * Task metrics and task-phase spans from the Orchestrator's state changes: a queued span
 * (QUEUED → SCHEDULED) and a scheduled span per attempt (SCHEDULED → the attempt's end, with the
 * RunTask call under it), both in the trace of the submit.
 */
export function createOrchestratorObserver(
  opts: OrchestratorTelemetryOptions,
): OrchestratorObserver {
  const metrics = opts.registry ? taskMetrics(opts.registry) : undefined;
  const tracer = opts.tracer;
  const queuedSince = new Map<string, number>();
  const queuedSpans = new Map<string, Span>();
  const attempts = new Map<string, { a: Attempt; span?: Span; outcome?: string }>();

  const endQueued = (t: Transition, outcome: string) => {
    let span = queuedSpans.get(t.taskId);
    queuedSpans.delete(t.taskId);
    if (!span && tracer && t.state === TaskState.SCHEDULED) {
      // Queued before this process started (a restart): the span starts at submit.
      span = startQueued(tracer, t, t.createdAt);
    }
    span?.setAttribute(ATTR_OUTCOME, outcome);
    if (t.agentId) span?.setAttribute(ATTR_AGENT_ID, t.agentId);
    span?.end(t.at);
  };

  return {
    traceParent: () => (tracer ? currentTraceParent() : ""),

    transition(t) {
      metrics?.transitions.inc({ state: stateLabel(t.state), type: t.type });
      switch (t.state) {
        case TaskState.QUEUED:
          if (t.attempt > 0) metrics?.retries.inc({ type: t.type });
          queuedSince.set(t.taskId, t.at);
          if (tracer && !queuedSpans.has(t.taskId))
            queuedSpans.set(t.taskId, startQueued(tracer, t, t.at));
          break;
        case TaskState.SCHEDULED: {
          const since = queuedSince.get(t.taskId) ?? t.createdAt;
          queuedSince.delete(t.taskId);
          metrics?.queueWait.observe({ type: t.type }, Math.max(0, t.at - since) / 1000);
          endQueued(t, "scheduled");
          break;
        }
        case TaskState.RUNNING:
          metrics?.attempts.inc({ type: t.type });
          attempts.get(t.taskId)?.span?.addEvent("running", t.at);
          break;
        default:
          if (FINAL.has(t.state)) {
            queuedSince.delete(t.taskId);
            if (queuedSpans.has(t.taskId)) endQueued(t, stateLabel(t.state));
          }
      }
    },

    attempt(a, run) {
      const entry: { a: Attempt; span?: Span; outcome?: string } = { a };
      attempts.set(a.taskId, entry);
      if (!tracer) return run().finally(() => attempts.delete(a.taskId));
      const parent = contextFromTraceParent(a.traceParent);
      const span = tracer.startSpan(
        SPAN_TASK_SCHEDULED,
        {
          attributes: {
            [ATTR_TASK_ID]: a.taskId,
            [ATTR_TASK_TYPE]: a.type,
            [ATTR_TASK_ATTEMPT]: a.attempt,
            [ATTR_AGENT_ID]: a.agentId,
            [ATTR_NODE]: a.node,
          },
        },
        parent,
      );
      entry.span = span;
      return context.with(trace.setSpan(parent, span), run).finally(() => {
        attempts.delete(a.taskId);
        // No outcome: the Orchestrator stopped during the run, or the agent never took it.
        span.setAttribute(ATTR_OUTCOME, entry.outcome ?? "interrupted");
        span.end();
      });
    },

    attemptUnconfirmed(e) {
      // The attempt's span stays open until the host confirms; after a restart there is none.
      attempts
        .get(e.taskId)
        ?.span?.addEvent(
          EVENT_ATTEMPT_UNCONFIRMED,
          { [ATTR_AGENT_HOST]: e.host, [ATTR_REASON]: e.reason },
          e.at,
        );
    },

    attemptEnded(e) {
      const entry = attempts.get(e.taskId);
      const type = entry?.a.type ?? "generic";
      const model = entry?.a.model || opts.defaultModel || "default";
      const outcome = stateLabel(e.state);
      const { input, output, cacheRead, cacheCreation, usd } = spentBy(e);
      if (metrics) {
        metrics.runSeconds.observe({ type, state: outcome }, e.runMs / 1000);
        metrics.inputTokens.inc({ model }, input);
        metrics.outputTokens.inc({ model }, output);
        metrics.cacheReadTokens.inc({ model }, cacheRead);
        metrics.cacheCreationTokens.inc({ model }, cacheCreation);
        metrics.costUsd.inc({ model }, usd);
      }
      if (entry) {
        entry.outcome = outcome;
        const span = entry.span;
        span?.setAttributes({
          [ATTR_INPUT_TOKENS]: input,
          [ATTR_OUTPUT_TOKENS]: output,
          [ATTR_COST_USD]: usd,
        });
        if (e.state !== TaskState.SUCCEEDED && e.state !== TaskState.CANCELLED)
          span?.setStatus({ code: SpanStatusCode.ERROR, message: e.result.error });
      }
    },
  };
}

/**
 * What one attempt spent: the task's usage and cost after it (which count every attempt so far)
 * less those before it; never below 0.
 */
function spentBy(e: AttemptEnd) {
  const [after, before] = [e.result.usage, e.before?.usage];
  const tokens = (
    k: "inputTokens" | "outputTokens" | "cacheReadInputTokens" | "cacheCreationInputTokens",
  ) => Math.max(0, Number((after?.[k] ?? 0n) - (before?.[k] ?? 0n)));
  return {
    input: tokens("inputTokens"),
    output: tokens("outputTokens"),
    cacheRead: tokens("cacheReadInputTokens"),
    cacheCreation: tokens("cacheCreationInputTokens"),
    usd: Math.max(0, e.result.costUsd - (e.before?.costUsd ?? 0)),
  };
}

function startQueued(tracer: Tracer, t: Transition, start: number): Span {
  return tracer.startSpan(
    SPAN_TASK_QUEUED,
    {
      startTime: start,
      attributes: {
        [ATTR_TASK_ID]: t.taskId,
        [ATTR_TASK_TYPE]: t.type,
        [ATTR_TASK_PRIORITY]: t.priority,
        [ATTR_TASK_ATTEMPT]: t.attempt + 1,
      },
    },
    contextFromTraceParent(t.traceParent),
  );
}

function taskMetrics(registry: Registry) {
  const registers = [registry];
  return {
    transitions: new Counter({
      name: "conductor_task_transitions_total",
      help: "Task state changes, by the state entered and the task type.",
      labelNames: ["state", "type"],
      registers,
    }),
    attempts: new Counter({
      name: "conductor_task_attempts_total",
      help: "Attempts started (an agent began running the task), by task type.",
      labelNames: ["type"],
      registers,
    }),
    retries: new Counter({
      name: "conductor_task_retries_total",
      help: "Tasks put back in the queue after an attempt (failed with attempts left, or interrupted by a restart), by task type.",
      labelNames: ["type"],
      registers,
    }),
    queueWait: new Histogram({
      name: "conductor_task_queue_wait_seconds",
      help: "Time from entering the queue (submit or requeue, backoff included) to being scheduled.",
      labelNames: ["type"],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600],
      registers,
    }),
    runSeconds: new Histogram({
      name: "conductor_task_run_duration_seconds",
      help: "Duration of an attempt from its start on the agent to its outcome, by type and outcome.",
      labelNames: ["type", "state"],
      buckets: [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600],
      registers,
    }),
    inputTokens: new Counter({
      name: "conductor_input_tokens_total",
      help: "Input tokens the model read (cache reads and writes not included), by model.",
      labelNames: ["model"],
      registers,
    }),
    outputTokens: new Counter({
      name: "conductor_output_tokens_total",
      help: "Output tokens the model wrote, by model.",
      labelNames: ["model"],
      registers,
    }),
    cacheReadTokens: new Counter({
      name: "conductor_cache_read_input_tokens_total",
      help: "Input tokens read from the prompt cache, by model.",
      labelNames: ["model"],
      registers,
    }),
    cacheCreationTokens: new Counter({
      name: "conductor_cache_creation_input_tokens_total",
      help: "Input tokens written to the prompt cache, by model.",
      labelNames: ["model"],
      registers,
    }),
    costUsd: new Counter({
      name: "conductor_cost_usd_total",
      help: "Cost in US dollars the CLI reported for finished attempts, by model.",
      labelNames: ["model"],
      registers,
    }),
  };
}

/** Registers the gauges read from the store at scrape time: queue depth and tasks by state. */
export function registerTaskGauges(registry: Registry, store: TaskStore): void {
  new Gauge({
    name: "conductor_queue_depth",
    help: "Tasks waiting in the queue, by priority (0–10, higher runs first).",
    labelNames: ["priority"],
    registers: [registry],
    collect() {
      const counts = store.queuedByPriority();
      for (const p of new Set([...PRIORITIES, ...counts.keys()]))
        this.set({ priority: String(p) }, counts.get(p) ?? 0);
    },
  });
  new Gauge({
    name: "conductor_tasks",
    help: "Tasks in the store, by state.",
    labelNames: ["state"],
    registers: [registry],
    collect() {
      const counts = store.countByState();
      for (const s of STATES) this.set({ state: stateLabel(s) }, counts.get(s) ?? 0);
    },
  });
}

/**
 * Registers the gauges of the spend limits (orchestrator.spend_limits), read at scrape time: each
 * limit and what the tasks it covers spent in its window, by the limit's labels ("k=v,…"; "*" for
 * the one covering every task).
 */
export function registerSpendGauges(registry: Registry, limits: SpendLimits): void {
  if (limits.limits.length === 0) return;
  const name = (l: Record<string, string>) => labelsText(l) || "*";
  new Gauge({
    name: "conductor_spend_limit_usd",
    help: "Each spend limit: USD its tasks may spend in its window (an hour unless configured), by its labels.",
    labelNames: ["limit"],
    registers: [registry],
    collect() {
      for (const l of limits.limits) this.set({ limit: name(l.labels) }, l.usdPerHour);
    },
  });
  new Gauge({
    name: "conductor_spend_window_usd",
    help: "USD the tasks a spend limit covers spent in its window, as recorded when attempts end; at or over conductor_spend_limit_usd, its new tasks stay queued.",
    labelNames: ["limit"],
    registers: [registry],
    collect() {
      for (const s of limits.states(Date.now())) this.set({ limit: name(s.limit.labels) }, s.spent);
    },
  });
}
