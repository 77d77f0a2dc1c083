import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import type { RunOutcome } from "../../gen/conductor/v1/agent_host_pb.js";
import {
  StateChangeSchema,
  TaskResultSchema,
  TaskState,
  type Task,
  type TaskEvent,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { AsyncQueue } from "../shared/async-queue.ts";
import { notFound, precondition } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { HostRegistry, type AgentRef } from "./hosts.ts";
import type { OrchestratorObserver } from "./observer.ts";
import { FINAL_STATES, TaskStore } from "./store.ts";
import { validateSpec } from "./validate.ts";

/** What the Orchestrator is configured with (from Config, durations in ms). */
export interface OrchestratorOptions {
  dataDir: string;
  agentHosts: string[];
  maxWorkers: number;
  defaultMaxAttempts: number;
  retryBackoffMs: number;
  maxPromptBytes: number;
  rpcTimeoutMs: number;
  defaultTimeoutMs: number;
  pollIntervalMs?: number;
  log: Logger;
  /** Told of every state change and attempt (metrics, traces); optional. */
  observer?: OrchestratorObserver | undefined;
  /** Interceptors of the calls to AgentHosts (tracing, metrics). */
  hostInterceptors?: Interceptor[];
}

interface ActiveRun {
  ref: AgentRef;
  abort: AbortController;
  cancelRequested: boolean;
  done: Promise<void>;
}

const stateName = (s: TaskState) => `TASK_STATE_${TaskState[s]}`;

/**
 * The Orchestrator's domain: the durable task queue, the scheduler that puts queued tasks
 * onto idle agents, and the fan-out of task events to watchers. Knows nothing of gRPC
 * servers; the routes translate.
 */
export class Orchestrator {
  readonly store: TaskStore;
  readonly hosts: HostRegistry;
  private readonly opts: OrchestratorOptions;
  private readonly runs = new Map<string, ActiveRun>();
  private readonly watchers = new Map<string, Set<(e: TaskEvent) => void>>();
  private wakeTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(opts: OrchestratorOptions) {
    this.opts = opts;
    this.store = new TaskStore(opts.dataDir);
    this.hosts = new HostRegistry(
      opts.agentHosts,
      opts.rpcTimeoutMs,
      opts.log,
      opts.hostInterceptors,
    );
  }

  /** Recovers interrupted tasks, then starts watching hosts and scheduling. */
  start(): void {
    this.recover();
    this.hosts.start(this.opts.pollIntervalMs ?? 1000, () => this.schedule());
  }

  /** Stores a task (durably) and queues it; a known idempotency key returns the first task. */
  submit(input: TaskSpec | undefined): { task: Task; deduplicated: boolean } {
    const spec = validateSpec(input, { maxPromptBytes: this.opts.maxPromptBytes });
    const maxAttempts = spec.maxAttempts || this.opts.defaultMaxAttempts;
    const now = Date.now();
    const traceParent = this.opts.observer?.traceParent();
    const { task, created } = this.store.insert(randomUUID(), spec, maxAttempts, now, traceParent);
    if (created) {
      this.record(
        task.id,
        { state: TaskState.QUEUED, agentId: "", attempt: 0, reason: "submitted" },
        now,
      );
      queueMicrotask(() => this.schedule());
    }
    return { task, deduplicated: !created };
  }

  get(id: string): Task {
    const task = id ? this.store.get(id) : undefined;
    if (!task) throw notFound("task", id);
    return task;
  }

  /** Streams a task's stored events, then live ones, ending after its final state. */
  async *watch(id: string, signal: AbortSignal): AsyncGenerator<TaskEvent> {
    this.get(id);
    const queue = new AsyncQueue<TaskEvent>();
    const listener = (e: TaskEvent) => queue.push(e);
    const set = this.watchers.get(id) ?? new Set();
    set.add(listener);
    this.watchers.set(id, set);
    const onAbort = () => queue.end();
    signal.addEventListener("abort", onAbort);
    try {
      let last = 0n;
      for (const e of this.store.events(id)) {
        last = e.seq;
        yield e;
        if (isFinal(e)) return;
      }
      for await (const e of queue) {
        if (e.seq <= last) continue;
        last = e.seq;
        yield e;
        if (isFinal(e)) return;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      set.delete(listener);
      if (set.size === 0) this.watchers.delete(id);
    }
  }

  /** Cancels a task: a queued one at once, a running one once its CLI has ended. */
  async cancel(id: string): Promise<Task> {
    const task = this.get(id);
    if (FINAL_STATES.has(task.state)) {
      throw precondition(
        `task ${id} has already ended (${stateName(task.state)}); nothing to cancel`,
      );
    }
    const now = Date.now();
    if (
      this.store.transition(id, [TaskState.QUEUED], { state: TaskState.CANCELLED, endTime: now })
    ) {
      this.record(id, { state: TaskState.CANCELLED, reason: "cancelled while queued" }, now);
      return this.get(id);
    }
    const run = this.runs.get(id);
    if (run) {
      run.cancelRequested = true;
      try {
        await run.ref.host.client.cancelRun({ taskId: id }, { timeoutMs: this.opts.rpcTimeoutMs });
      } catch {
        run.abort.abort(); // not started on the host yet, or the host is gone: drop the stream
      }
      await run.done;
    }
    return this.get(id);
  }

  /** Every agent the hosts report, with what the Orchestrator has them doing. */
  agents(): Agent[] {
    return this.hosts.all().map((r) => r.agent);
  }

  /** Counts, percentiles and totals for GetStats. */
  stats() {
    const s = this.store.stats();
    const agents = this.agents();
    const tasksByState: Record<string, bigint> = {};
    for (const [state, n] of s.byState) tasksByState[stateName(state)] = BigInt(n);
    return {
      tasksByState,
      durationP50Ms: s.runMs.p50,
      durationP95Ms: s.runMs.p95,
      durationP99Ms: s.runMs.p99,
      inputTokensTotal: BigInt(s.inputTokens),
      outputTokensTotal: BigInt(s.outputTokens),
      costUsdTotal: s.costUsd,
      agentsBusy: agents.filter((a) => a.state === AgentState.BUSY).length,
      agentsIdle: agents.filter((a) => a.state === AgentState.IDLE).length,
    };
  }

  /** Puts as many queued tasks as there are free agents onto them. */
  schedule(): void {
    if (this.closed) return;
    const busy = new Set([...this.runs.values()].map((r) => r.ref.key));
    const free = this.hosts.idle().filter((r) => !busy.has(r.key));
    const slots = Math.min(free.length, this.opts.maxWorkers - this.runs.size);
    const now = Date.now();
    if (slots > 0) {
      const tasks = this.store.nextQueued(slots, now);
      tasks.forEach((task, i) => this.dispatch(task, free[i]!, now));
    }
    clearTimeout(this.wakeTimer);
    const wake = this.store.nextWakeup(now);
    if (wake !== undefined) this.wakeTimer = setTimeout(() => this.schedule(), wake - now);
  }

  /** Stops scheduling and ends every run's stream; the store stays consistent. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.wakeTimer);
    this.hosts.stop();
    for (const run of this.runs.values()) run.abort.abort();
    await Promise.all([...this.runs.values()].map((r) => r.done));
    this.store.close();
  }

  private dispatch(task: Task, ref: AgentRef, now: number): void {
    const attempt = task.attempts + 1;
    const ok = this.store.transition(task.id, [TaskState.QUEUED], {
      state: TaskState.SCHEDULED,
      agentId: ref.agent.id,
      attempts: attempt,
    });
    if (!ok) return;
    ref.agent.state = AgentState.BUSY;
    ref.agent.taskId = task.id;
    this.record(task.id, { state: TaskState.SCHEDULED, agentId: ref.agent.id, attempt }, now);
    const abort = new AbortController();
    const run: ActiveRun = { ref, abort, cancelRequested: false, done: Promise.resolve() };
    this.runs.set(task.id, run);
    const execute = () => this.execute(task, attempt, run);
    const observer = this.opts.observer;
    const attemptInfo = () => ({
      taskId: task.id,
      type: task.spec?.type || "generic",
      model: task.spec?.model ?? "",
      attempt,
      agentId: ref.agent.id,
      node: ref.agent.nodeId,
      traceParent: this.store.meta(task.id)?.traceParent ?? "",
    });
    run.done = (observer ? observer.attempt(attemptInfo(), execute) : execute()).finally(() => {
      this.runs.delete(task.id);
      if (ref.agent.state === AgentState.BUSY) ref.agent.state = AgentState.IDLE;
      ref.agent.taskId = "";
      ref.agent.tasksCompleted++;
      this.store.forgetEvents(task.id);
      this.schedule();
    });
  }

  private async execute(task: Task, attempt: number, run: ActiveRun): Promise<void> {
    const spec = task.spec!;
    const log = this.opts.log.child({ task_id: task.id, agent_id: run.ref.agent.id, attempt });
    let outcome: RunOutcome | undefined;
    let startedAt = Date.now();
    let started = false;
    try {
      const stream = run.ref.host.client.runTask(
        { agentId: run.ref.agent.id, taskId: task.id, attempt, spec },
        { signal: run.abort.signal },
      );
      for await (const res of stream) {
        const now = Date.now();
        switch (res.kind.case) {
          case "started":
            started = true;
            startedAt = now;
            this.store.transition(task.id, [TaskState.SCHEDULED], {
              state: TaskState.RUNNING,
              startTime: now,
            });
            this.record(
              task.id,
              { state: TaskState.RUNNING, agentId: run.ref.agent.id, attempt },
              now,
            );
            break;
          case "output":
            this.emit(
              this.store.appendEvent(task.id, { case: "output", value: res.kind.value }, now),
            );
            break;
          case "outcome":
            outcome = res.kind.value;
            break;
        }
      }
      if (!outcome) outcome = lost("the agent host ended the run without an outcome");
    } catch (e) {
      const err = ConnectError.from(e);
      if (!started && !run.cancelRequested && !this.closed) {
        // The agent never started it (busy, gone, or its host unreachable): not an attempt.
        this.bounce(task.id, attempt, run, err, log);
        return;
      }
      outcome = lost(
        run.cancelRequested || this.closed
          ? "the run was stopped"
          : `lost the agent host during the run (${Code[err.code]}): ${err.rawMessage}`,
      );
      if (this.closed) return; // shutting down: recovery decides on restart
    }
    this.finish(task.id, attempt, outcome, run, Date.now() - startedAt, log);
  }

  private finish(
    id: string,
    attempt: number,
    outcome: RunOutcome,
    run: ActiveRun,
    runMs: number,
    log: Logger,
  ) {
    const now = Date.now();
    const result = outcome.result ?? create(TaskResultSchema, {});
    let state = outcome.state;
    if (run.cancelRequested && state !== TaskState.SUCCEEDED) {
      state = TaskState.CANCELLED;
      result.error = "cancelled while running";
    } else if (state === TaskState.CANCELLED) {
      state = TaskState.FAILED;
      result.error = "the run was stopped on the agent host (agent stopped)";
    }
    this.opts.observer?.attemptEnded({ taskId: id, attempt, state, runMs, result });
    const active = [TaskState.SCHEDULED, TaskState.RUNNING];
    const maxAttempts = this.store.maxAttempts(id);
    if (state === TaskState.FAILED && attempt < maxAttempts) {
      const backoff = Math.min(60_000, this.opts.retryBackoffMs * 2 ** (attempt - 1));
      if (
        this.store.transition(id, active, {
          state: TaskState.QUEUED,
          notBefore: now + backoff,
          result,
        })
      ) {
        const reason = `attempt ${attempt} of ${maxAttempts} failed: ${result.error}; retrying in ${backoff / 1000} s`;
        log.warn("attempt failed, retrying", { error: result.error, backoff_ms: backoff });
        this.record(id, { state: TaskState.QUEUED, attempt, reason }, now);
      }
      return;
    }
    if (this.store.transition(id, active, { state, endTime: now, result, runMs })) {
      this.emit(this.store.appendEvent(id, { case: "result", value: result }, now));
      this.record(id, { state, agentId: run.ref.agent.id, attempt, reason: result.error }, now);
      log.info("task ended", { state: stateName(state), error: result.error || undefined });
    }
  }

  /** Puts a task the agent refused back in the queue, and keeps the agent out until the next poll. */
  private bounce(
    id: string,
    attempt: number,
    run: ActiveRun,
    err: ConnectError,
    log: Logger,
  ): void {
    run.ref.agent.state = AgentState.FAILED;
    log.warn("agent did not take the task; requeued", {
      code: Code[err.code],
      error: err.rawMessage,
    });
    if (
      this.store.transition(id, [TaskState.SCHEDULED], {
        state: TaskState.QUEUED,
        attempts: attempt - 1,
      })
    ) {
      const reason = `agent ${run.ref.agent.id} could not start it (${err.rawMessage}); requeued`;
      this.record(id, { state: TaskState.QUEUED, attempt: attempt - 1, reason }, Date.now());
    }
  }

  /** Tasks interrupted by a stop are requeued if attempts are left, else failed — never dropped. */
  private recover(): void {
    const now = Date.now();
    for (const task of this.store.inStates([TaskState.SCHEDULED, TaskState.RUNNING])) {
      const max = this.store.maxAttempts(task.id);
      const what = `the orchestrator stopped during attempt ${task.attempts} of ${max}`;
      const from = [TaskState.SCHEDULED, TaskState.RUNNING];
      if (task.attempts < max) {
        this.store.transition(task.id, from, { state: TaskState.QUEUED, notBefore: now });
        this.record(
          task.id,
          { state: TaskState.QUEUED, attempt: task.attempts, reason: `${what}; retrying` },
          now,
        );
      } else {
        const result = create(TaskResultSchema, {
          isError: true,
          error: `interrupted: ${what}; no attempts left`,
        });
        this.store.transition(task.id, from, { state: TaskState.FAILED, endTime: now, result });
        this.emit(this.store.appendEvent(task.id, { case: "result", value: result }, now));
        this.record(
          task.id,
          { state: TaskState.FAILED, attempt: task.attempts, reason: result.error },
          now,
        );
      }
      this.opts.log.warn("recovered an interrupted task", {
        task_id: task.id,
        attempts: task.attempts,
      });
    }
  }

  private record(
    id: string,
    change: { state: TaskState; agentId?: string; attempt?: number; reason?: string },
    now: number,
  ) {
    const value = create(StateChangeSchema, change);
    this.emit(this.store.appendEvent(id, { case: "stateChange", value }, now));
    const observer = this.opts.observer;
    const meta = observer && this.store.meta(id);
    if (observer && meta) {
      observer.transition({
        ...meta,
        taskId: id,
        state: value.state,
        attempt: value.attempt,
        agentId: value.agentId,
        reason: value.reason,
        at: now,
      });
    }
  }

  private emit(event: TaskEvent): void {
    for (const fn of this.watchers.get(event.taskId) ?? []) fn(event);
  }
}

function isFinal(e: TaskEvent): boolean {
  return e.kind.case === "stateChange" && FINAL_STATES.has(e.kind.value.state);
}

function lost(error: string): RunOutcome {
  return {
    $typeName: "conductor.v1.RunOutcome",
    state: TaskState.FAILED,
    result: create(TaskResultSchema, { isError: true, error }),
  };
}
