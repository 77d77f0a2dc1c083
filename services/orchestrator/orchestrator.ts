import { randomUUID } from "node:crypto";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import {
  TaskState,
  type Task,
  type TaskEvent,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { notFound, precondition } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { ArtifactStore, MAX_TASK_ARTIFACT_BYTES } from "./artifacts.ts";
import { dependencyFailed, TaskEvents } from "./events.ts";
import { HostRegistry } from "./hosts.ts";
import { Fleet } from "./nodes.ts";
import { checkPlaceable, place } from "./placement.ts";
import type { OrchestratorObserver } from "./observer.ts";
import { AttemptRunner } from "./runner.ts";
import { FINAL_STATES, TaskStore } from "./store.ts";
import { taskTypeRegistry } from "./load-task-types.ts";
import type { TaskTypeRegistry } from "./task-types.ts";
import { validateSpec } from "./validate.ts";
import { checkAtSubmit, patchOf } from "./workspaces.ts";

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
  /** Most bytes of agent output kept per task (orchestrator.event_retention_bytes). */
  outputRetentionBytes?: number;
  /**
   * How long an attempt whose AgentHost went silent is waited for before it is taken as over
   * (orchestrator.unconfirmed_attempt_timeout_seconds; default 600 s).
   */
  unconfirmedAttemptTimeoutMs?: number;
  log: Logger;
  /** Told of every state change and attempt (metrics, traces); optional. */
  observer?: OrchestratorObserver | undefined;
  /** Interceptors of the calls to AgentHosts (tracing, metrics). */
  hostInterceptors?: Interceptor[];
  /** A joined node's lease (orchestrator.node_lease_seconds; default 15 s). */
  nodeLeaseMs?: number;
  /** The task types tasks may name (loadTaskTypes); default: the built-ins. */
  types?: TaskTypeRegistry;
}

/** Most queued tasks one schedule looks at. */
const MAX_SCHEDULE_SCAN = 1000;

const stateName = (s: TaskState) => `TASK_STATE_${TaskState[s]}`;

/**
 * The Orchestrator's domain: the durable task queue, the scheduler that puts queued tasks
 * onto idle agents (the AttemptRunner runs them), and the task events watchers follow. Knows
 * nothing of gRPC servers; the routes translate.
 */
export class Orchestrator {
  readonly store: TaskStore;
  readonly hosts: HostRegistry;
  /** The whole of long outputs and results (GetTaskOutput). */
  readonly artifacts: ArtifactStore;
  /** The nodes: joined ones' leases and tunnels, draining. */
  readonly fleet: Fleet;
  /** The task types: what a spec's type and params mean. */
  readonly types: TaskTypeRegistry;
  private readonly events: TaskEvents;
  private readonly runner: AttemptRunner;
  private readonly opts: OrchestratorOptions;
  private wakeTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(opts: OrchestratorOptions) {
    this.opts = opts;
    this.types = opts.types ?? taskTypeRegistry();
    this.store = new TaskStore(opts.dataDir, {
      ...(opts.outputRetentionBytes !== undefined
        ? { outputRetentionBytes: opts.outputRetentionBytes }
        : {}),
    });
    this.artifacts = new ArtifactStore(opts.dataDir, opts.log);
    this.hosts = new HostRegistry(
      opts.agentHosts,
      opts.rpcTimeoutMs,
      opts.log,
      opts.hostInterceptors,
    );
    this.events = new TaskEvents(this.store, opts.observer);
    this.runner = new AttemptRunner({
      store: this.store,
      hosts: this.hosts,
      events: this.events,
      artifacts: this.artifacts,
      types: this.types,
      observer: opts.observer,
      log: opts.log,
      retryBackoffMs: opts.retryBackoffMs,
      rpcTimeoutMs: opts.rpcTimeoutMs,
      unconfirmedAttemptTimeoutMs: opts.unconfirmedAttemptTimeoutMs ?? 600_000,
      reportGraceMs: opts.nodeLeaseMs ?? 15_000,
      onRelease: () => this.schedule(),
    });
    this.fleet = new Fleet({
      hosts: this.hosts,
      store: this.store,
      leaseTtlMs: opts.nodeLeaseMs ?? 15_000,
      log: opts.log,
      report: (node, run, outcome) => this.runner.reported(node, run.taskId, run.attempt, outcome),
      used: (node) => this.runner.usedOn(node),
    });
  }

  /** Takes up interrupted tasks, then starts watching hosts and scheduling. */
  start(): void {
    this.fleet.awaitRejoin(Date.now());
    this.runner.recover();
    this.settleWaiting(this.store.waitingTasks());
    this.hosts.start(this.opts.pollIntervalMs ?? 1000, () => {
      if (this.closed) return;
      const now = Date.now();
      for (const node of this.hosts.expire(now))
        this.opts.log.warn("node lost: its lease lapsed; its attempts end and are retried", {
          node,
        });
      this.runner.checkUnconfirmed(now);
      this.schedule();
    });
  }

  /**
   * Stores a task (durably, with its first event) and queues it; a known idempotency key
   * returns the first task. A full disk throws StorageFull, with nothing stored.
   */
  submit(input: TaskSpec | undefined): { task: Task; deduplicated: boolean } {
    const spec = this.validate(input);
    checkPlaceable(this.hosts.links, spec);
    return this.enqueue(spec);
  }

  /** A spec's own fields, then its type and params: INVALID_ARGUMENT naming what is wrong. */
  private validate(input: TaskSpec | undefined): TaskSpec {
    const spec = validateSpec(input, { maxPromptBytes: this.opts.maxPromptBytes });
    this.types.check(spec, this.opts.maxPromptBytes);
    return spec;
  }

  /**
   * Tasks waiting for dependencies, as they stand now (after a restart, or at submit): one
   * whose dependency ended otherwise than SUCCEEDED ends CANCELLED naming it; the rest wait for
   * as many as have not succeeded.
   */
  private settleWaiting(waiting: ReturnType<TaskStore["waitingTasks"]>): void {
    const now = Date.now();
    for (const w of waiting) {
      if (!w.failed) {
        this.store.setWaiting(w.id, w.waiting);
        continue;
      }
      const { result, change } = dependencyFailed(w.failed.id, w.failed.state);
      const update = { endTime: now, result };
      const before = [{ case: "result" as const, value: result }];
      this.events.transition(w.id, [TaskState.QUEUED], update, change, now, before);
    }
  }

  /** Stores a validated spec with its first event, and queues it. */
  private enqueue(spec: TaskSpec): { task: Task; deduplicated: boolean } {
    for (const d of spec.dependsOn)
      if (this.store.state(d) === undefined) throw notFound("dependency task", d);
    const maxAttempts = spec.maxAttempts || this.opts.defaultMaxAttempts;
    const now = Date.now();
    const traceParent = this.opts.observer?.traceParent();
    const { task, created } = this.events.submitted(
      () => this.store.insert(randomUUID(), spec, maxAttempts, now, traceParent),
      { state: TaskState.QUEUED, agentId: "", attempt: 0, reason: "submitted" },
      now,
    );
    if (!created) return { task, deduplicated: true };
    queueMicrotask(() => this.schedule());
    if (spec.dependsOn.length === 0) return { task, deduplicated: false };
    // A dependency that already failed ends it at once (it waits for the others otherwise).
    this.settleWaiting(this.store.waitingTasks(task.id));
    return { task: this.get(task.id), deduplicated: false };
  }

  /**
   * submit() after a node has checked the task's workspace (repository, ref, branch, host
   * path): a bad one is INVALID_ARGUMENT / FAILED_PRECONDITION in the node's words.
   */
  async submitChecked(
    input: TaskSpec | undefined,
    signal?: AbortSignal,
  ): Promise<{ task: Task; deduplicated: boolean }> {
    const spec = this.validate(input);
    checkPlaceable(this.hosts.links, spec);
    await checkAtSubmit(this.hosts, spec, signal);
    return this.enqueue(spec);
  }

  /** A task's change as `git format-patch` output, in chunks, from the node holding it. */
  patch(id: string, signal: AbortSignal): AsyncGenerator<Uint8Array> {
    const task = this.get(id);
    return patchOf(this.hosts, task, this.store.attemptHost(id), signal);
  }

  get(id: string): Task {
    const task = id ? this.store.get(id) : undefined;
    if (!task) throw notFound("task", id);
    return task;
  }

  /**
   * The whole text an event (seq) or the task's result (seq 0) holds cut short, in chunks.
   * A result never cut is its text; an event whose whole was not kept is NOT_FOUND, saying why.
   */
  output(id: string, seq: number): Iterable<string> {
    const task = this.get(id);
    if (this.artifacts.has(id, seq)) return this.artifacts.chunks(id, seq);
    if (seq === 0) return task.result?.text ? [task.result.text] : [];
    const [event] = this.store.eventPage(id, BigInt(seq - 1), { maxEvents: 1, maxBytes: 1 });
    if (event?.seq !== BigInt(seq)) {
      throw new ConnectError(
        `task ${id} has no event ${seq} (dropped by event retention, or not yet happened)`,
        Code.NotFound,
      );
    }
    throw new ConnectError(
      `event ${seq} of task ${id} has no whole output kept: only events marked truncated have one, and not those past the task's ${MAX_TASK_ARTIFACT_BYTES / 1024 / 1024} MiB of kept output; its event holds all there is`,
      Code.NotFound,
    );
  }

  /** Streams a task's stored events, then live ones, ending after its final state. */
  watch(id: string, signal: AbortSignal): AsyncGenerator<TaskEvent> {
    this.get(id);
    return this.events.watch(id, signal);
  }

  /**
   * Cancels a task: a queued one at once, a running one once its CLI has ended, one whose
   * AgentHost was lost at once (its host is asked to end the run, best effort).
   */
  async cancel(id: string): Promise<Task> {
    const task = this.get(id);
    if (FINAL_STATES.has(task.state)) {
      throw precondition(
        `task ${id} has already ended (${stateName(task.state)}); nothing to cancel`,
      );
    }
    const now = Date.now();
    const change = { state: TaskState.CANCELLED, reason: "cancelled while queued" };
    if (this.events.transition(id, [TaskState.QUEUED], { endTime: now }, change, now)) {
      return this.get(id);
    }
    await this.runner.cancel(id);
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

  /**
   * Puts as many queued tasks as there are free agents onto them. An agent an attempt still
   * holds (running, or waiting for its lost host's word) is not free.
   */
  schedule(): void {
    if (this.closed) return;
    try {
      this.scheduleNow();
    } catch (e) {
      // A store that cannot be read or written now (a full disk): the next poll tries again.
      this.opts.log.error("scheduling failed; trying again at the next poll", { error: e });
    }
  }

  private scheduleNow(): void {
    const held = this.runner.held();
    const free = this.hosts.idle().filter((r) => !held.has(r.key));
    const slots = Math.min(free.length, this.opts.maxWorkers - this.runner.size);
    const now = Date.now();
    if (slots > 0) {
      // Tasks that fit no free agent now wait; those after them are looked at (bounded).
      const tasks = this.store.nextQueued(Math.min(MAX_SCHEDULE_SCAN, slots * 8 + 16), now);
      const pairs = place(tasks, free, (host) => this.runner.usedOn(host)).slice(0, slots);
      for (const [task, ref] of pairs) this.runner.dispatch(task, ref, now);
    }
    clearTimeout(this.wakeTimer);
    const wake = this.store.nextWakeup(now);
    if (wake !== undefined) this.wakeTimer = setTimeout(() => this.schedule(), wake - now);
  }

  /**
   * Stops scheduling, ends every run's stream and cuts the nodes' tunnels, at once: a joined
   * node's runs go on under its lease, for a restarted Orchestrator to take up. The API still
   * answers (from the store) until close().
   */
  async stopWork(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.wakeTimer);
    await Promise.all([this.hosts.stop(), this.runner.close()]);
  }

  /** stopWork(), then closes the store; the store stays consistent. */
  async close(): Promise<void> {
    await this.stopWork();
    this.store.close();
    this.artifacts.close();
  }
}
