import type { TaskResult, TaskState } from "../../gen/conductor/v1/task_pb.js";

/** A durable change of a task's state, as record() writes it. */
export interface Transition {
  taskId: string;
  /** The task's type ("generic" when the spec names none). */
  type: string;
  priority: number;
  state: TaskState;
  attempt: number;
  agentId: string;
  reason: string;
  /** When it happened (ms since the epoch). */
  at: number;
  /** When the task was submitted. */
  createdAt: number;
  /** The W3C traceparent stored with the task at submit ("" when none). */
  traceParent: string;
}

/** One attempt of a task on an agent, as dispatch() starts it. */
export interface Attempt {
  taskId: string;
  type: string;
  /** The model the spec asks for ("" for the agent's default). */
  model: string;
  attempt: number;
  agentId: string;
  node: string;
  traceParent: string;
}

/** How an attempt ended, before any retry is decided. */
export interface AttemptEnd {
  taskId: string;
  attempt: number;
  /** The attempt's outcome: SUCCEEDED, FAILED, CANCELLED or TIMED_OUT. */
  state: TaskState;
  runMs: number;
  /** The task's result after it: its usage and cost count every attempt so far. */
  result: TaskResult;
  /** The task's result before it (the attempts before spent what it counts), if any. */
  before?: TaskResult | undefined;
}

/** An attempt whose AgentHost was lost: nothing follows until the host confirms it is over. */
export interface AttemptUnconfirmed {
  taskId: string;
  attempt: number;
  /** The AgentHost's address. */
  host: string;
  /** What happened and what is awaited, as written to the task's events. */
  reason: string;
  at: number;
}

/**
 * What the Orchestrator tells whoever watches it (metrics, traces). The Orchestrator knows
 * nothing of Prometheus or OpenTelemetry; an observer never changes what it does.
 */
export interface OrchestratorObserver {
  /** The caller's trace context, to store with a submitted task ("" for none). */
  traceParent(): string;
  /** Called after every durable state change. */
  transition(t: Transition): void;
  /** Runs one attempt (its RunTask call and everything after) inside the attempt's context. */
  attempt(a: Attempt, run: () => Promise<void>): Promise<void>;
  /** Called when an attempt's host is lost, or found unconfirmed after a restart (no transition). */
  attemptUnconfirmed(e: AttemptUnconfirmed): void;
  /** Called once per attempt that ended with an outcome (what it spent: result less before). */
  attemptEnded(e: AttemptEnd): void;
}
