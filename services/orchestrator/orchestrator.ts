import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { toJson } from "@bufbuild/protobuf";
import { timeOrderedId } from "../shared/ids.ts";
import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import {
  TaskState,
  WorkspaceSchema,
  type Task,
  type TaskEvent,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { invalid, notFound, precondition } from "../shared/errors.ts";
import { quote } from "../shared/quote.ts";
import type { Logger } from "../shared/log.ts";
import { ArtifactStore, MAX_TASK_ARTIFACT_BYTES } from "./artifacts.ts";
import { dependencyFailed, TaskEvents } from "./events.ts";
import { expandGroup, Groups, linkMembers, REDUCE } from "./groups.ts";
import { HostRegistry, type AgentRef } from "./hosts.ts";
import { Fleet } from "./nodes.ts";
import { checkPlaceable, misfit, place } from "./placement.ts";
import type { OrchestratorObserver } from "./observer.ts";
import { AttemptRunner, withDependencyResults } from "./runner.ts";
import { heldReason, SpendLimits, type SpendLimit } from "./spend-limits.ts";
import { FINAL_STATES, TaskStore } from "./store.ts";
import { taskTypeRegistry } from "./load-task-types.ts";
import type { TaskTypeRegistry } from "./task-types.ts";
import { validateSpec } from "./validate.ts";
import type { TaskGroup, TaskGroupSpec } from "../../gen/conductor/v1/group_pb.js";
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
  /** Fleet-wide spend limits (orchestrator.spend_limits); none by default. */
  spendLimits?: SpendLimit[];
  /** The task types tasks may name (loadTaskTypes); default: the built-ins. */
  types?: TaskTypeRegistry;
}

/** Most queued tasks one schedule looks at. */
const MAX_SCHEDULE_SCAN = 1000;
/** Most GetTaskPatch streams sent at once (each runs `git format-patch` on a node). */
export const MAX_PATCH_STREAMS = 8;

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
  /** Task groups: their aggregate, limits, cuts and watchers. */
  readonly groups: Groups;
  /** Fleet-wide spend limits: which queued tasks they hold, and until when. */
  readonly spendLimits: SpendLimits;
  /** The task types: what a spec's type and params mean. */
  readonly types: TaskTypeRegistry;
  /** Its tasks' events: stored, then told to watchers. */
  readonly events: TaskEvents;
  private readonly runner: AttemptRunner;
  private readonly opts: OrchestratorOptions;
  private wakeTimer: NodeJS.Timeout | undefined;
  private scheduling: NodeJS.Immediate | undefined;
  private closed = false;
  /** GetTaskPatch streams being sent. */
  private patchStreams = 0;

  /** How many GetTaskPatch streams are being sent. */
  get patchesSending(): number {
    return this.patchStreams;
  }

  /** The Orchestrator's logger (what its routes log). */
  get log(): Logger {
    return this.opts.log;
  }

  constructor(opts: OrchestratorOptions) {
    this.opts = opts;
    this.types = opts.types ?? taskTypeRegistry();
    this.store = new TaskStore(opts.dataDir, {
      ...(opts.outputRetentionBytes !== undefined
        ? { outputRetentionBytes: opts.outputRetentionBytes }
        : {}),
      spendRetentionMs: Math.max(0, ...(opts.spendLimits ?? []).map((l) => l.windowMs)),
    });
    this.spendLimits = new SpendLimits(opts.spendLimits ?? [], this.store);
    this.artifacts = new ArtifactStore(opts.dataDir, opts.log);
    this.hosts = new HostRegistry(
      opts.agentHosts,
      opts.rpcTimeoutMs,
      opts.log,
      opts.hostInterceptors,
    );
    this.events = new TaskEvents(this.store, opts.observer);
    this.groups = new Groups({
      store: this.store,
      events: this.events,
      cancelTask: (id) => this.cancel(id),
      log: opts.log,
    });
    this.events.listen((id, change, now) => {
      try {
        this.groups.changed(id, change, now);
      } catch (e) {
        opts.log.error("could not update the task's group", { task_id: id, error: e });
      }
    });
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
      prepare: (task) =>
        this.groups.prepare(
          task,
          withDependencyResults(task.spec!, (id) => this.store.get(id)?.result?.text),
        ),
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
    this.groups.recover(Date.now());
    this.hosts.recovered = (key) => this.runner.endRest(key);
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
  submit(input: TaskSpec | undefined): Promise<{ task: Task; deduplicated: boolean }> {
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

  /** Stores a validated spec with its first event (group commit), and queues it. */
  private async enqueue(spec: TaskSpec): Promise<{ task: Task; deduplicated: boolean }> {
    for (const d of spec.dependsOn)
      if (this.store.state(d) === undefined) throw notFound("dependency task", d);
    const maxAttempts = spec.maxAttempts || this.opts.defaultMaxAttempts;
    const now = Date.now();
    const traceParent = this.opts.observer?.traceParent();
    // Ids are UUIDv7 (RFC 9562), time-ordered: a new task's rows go at the end of the id and
    // event indexes, so a submit costs the same with 100,000 tasks stored as with 1,000 (a random
    // id lands on a random page of each: 2.7× slower at 100,000).
    const { task, created } = await this.events.submitted(
      () => this.store.insert(timeOrderedId(), spec, maxAttempts, now, traceParent),
      { state: TaskState.QUEUED, agentId: "", attempt: 0, reason: "submitted" },
      now,
    );
    // The task submitted before with this key, as it stands now (what holds it, if queued).
    if (!created) return { task: this.get(task.id), deduplicated: true };
    this.scheduleSoon();
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

  /**
   * Stores a group: its members (and reduce step), each checked as SubmitTask checks a spec
   * (errors name the member), in one transaction with the group; a known idempotency key
   * returns the first group.
   */
  async submitGroup(
    input: TaskGroupSpec | undefined,
    signal?: AbortSignal,
  ): Promise<{ group: TaskGroup; deduplicated: boolean }> {
    if (!input) throw invalid("spec is required");
    const known = this.groups.byKey(input.idempotencyKey);
    if (known) return { group: known, deduplicated: true };
    const members = linkMembers(expandGroup(input));
    const checked = new Set<string>();
    const check = async (where: string, spec: TaskSpec) => {
      try {
        this.validate(spec);
        checkPlaceable(this.hosts.links, spec);
        const ws = spec.workspace ? JSON.stringify(toJson(WorkspaceSchema, spec.workspace)) : "";
        if (ws && !checked.has(ws)) {
          checked.add(ws);
          await checkAtSubmit(this.hosts, spec, signal);
        }
      } catch (e) {
        if (!(e instanceof ConnectError)) throw e;
        // Members' ids stand for their names in depends_on and placeholders: say the names.
        let why = e.rawMessage;
        for (const m of members) why = why.replaceAll(m.id, m.name);
        throw new ConnectError(`${where}: ${why}`, e.code, undefined, undefined, e);
      }
    };
    const form = input.template ? "matrix combination" : "spec.members";
    for (const [i, m] of members.entries()) await check(`member ${m.name} (${form}[${i}])`, m.spec);
    if (input.reduce) {
      if (input.reduce.dependsOn.length > 0)
        throw invalid("spec.reduce.depends_on: the reduce step waits for every member; name none");
      await check("the reduce step (spec.reduce)", input.reduce);
    }
    const ids = new Set(members.map((m) => m.id));
    for (const m of members)
      for (const d of m.spec.dependsOn)
        if (!ids.has(d) && this.store.state(d) === undefined)
          throw new ConnectError(
            `member ${m.name}'s depends_on names ${quote(d)}, which is neither a member of the group nor a task`,
            Code.NotFound,
          );
    const groupId = timeOrderedId();
    const reduceId = input.reduce ? timeOrderedId() : "";
    const now = Date.now();
    const traceParent = this.opts.observer?.traceParent();
    const maxAttempts = (spec: TaskSpec) => spec.maxAttempts || this.opts.defaultMaxAttempts;
    let dedup: TaskGroup | undefined;
    await this.events.submittedAll(
      () => {
        // Checked again inside the transaction: two submits with one key race.
        dedup = this.groups.byKey(input.idempotencyKey);
        if (dedup) return [];
        this.store.insertGroup({ id: groupId, spec: input, now, reduceTaskId: reduceId });
        const out = members.map((m) =>
          this.store.insert(m.id, m.spec, maxAttempts(m.spec), now, traceParent, {
            groupId,
            member: m.name,
          }),
        );
        if (input.reduce) {
          const reduce = input.reduce;
          out.push(
            this.store.insert(reduceId, reduce, maxAttempts(reduce), now, traceParent, {
              groupId,
              member: REDUCE,
              after: [...ids],
            }),
          );
        }
        return out;
      },
      { state: TaskState.QUEUED, agentId: "", attempt: 0, reason: "submitted in a group" },
      now,
    );
    if (dedup) return { group: dedup, deduplicated: true };
    // A member whose dependency outside the group already failed ends at once.
    for (const m of members)
      if (m.spec.dependsOn.some((d) => !ids.has(d)))
        this.settleWaiting(this.store.waitingTasks(m.id));
    this.scheduleSoon();
    return { group: this.groups.get(groupId), deduplicated: false };
  }

  /**
   * A task's change as `git format-patch` output, in chunks, from the node holding it. At most
   * MAX_PATCH_STREAMS are sent at once (each runs git on its node); beyond, RESOURCE_EXHAUSTED.
   */
  async *patch(id: string, signal: AbortSignal): AsyncGenerator<Uint8Array> {
    const task = this.get(id);
    if (this.patchStreams >= MAX_PATCH_STREAMS) {
      throw new ConnectError(
        `${MAX_PATCH_STREAMS} patches are being sent already; try again once one has ended`,
        Code.ResourceExhausted,
      );
    }
    this.patchStreams++;
    try {
      yield* patchOf(this.hosts, task, this.store.attemptHost(id), signal);
    } finally {
      this.patchStreams--;
    }
  }

  /** A task as stored; a queued one says what holds it (queue_reason). */
  get(id: string): Task {
    const task = id ? this.store.get(id) : undefined;
    if (!task) throw notFound("task", id);
    if (task.state === TaskState.QUEUED) task.queueReason = this.queueReason(task, Date.now());
    return task;
  }

  /**
   * Why a queued task is not starting now, as far as the Orchestrator knows without looking at
   * agents: dependencies not yet SUCCEEDED, a retry's backoff, a reached spend limit; "" else.
   */
  private queueReason(task: Task, now: number): string {
    const info = this.store.queueInfo(task.id);
    if (info && info.waiting > 0 && task.member === REDUCE) {
      return `the group's reduce step: waiting for ${info.waiting} of its members to end`;
    }
    if (info && info.waiting > 0) {
      const deps = (task.spec?.dependsOn ?? [])
        .map((d) => ({ id: d, state: this.store.state(d) }))
        .filter((d) => d.state !== TaskState.SUCCEEDED)
        .map((d) => `${d.id} (${d.state !== undefined ? TaskState[d.state] : "unknown"})`);
      const n = deps.length;
      return `waiting for ${n} ${n === 1 ? "dependency" : "dependencies"} to succeed: ${deps.join(", ")}`;
    }
    if (info && info.notBefore > now) {
      const time = new Date(info.notBefore).toISOString().slice(11, 19);
      return `retrying after a failed attempt: not before ${time} UTC`;
    }
    const held = this.spendLimits.holding(task.spec?.labels ?? {}, now);
    if (held.length > 0) return heldReason(held);
    return task.groupId ? this.groups.holdReason(task.groupId) : "";
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

  /**
   * Streams a task's stored events (after `after`), then live ones, ending after its final
   * state.
   */
  watch(id: string, signal: AbortSignal, after = 0n): AsyncGenerator<TaskEvent> {
    this.get(id);
    return this.events.watch(id, signal, after);
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

  /** schedule() once, after what else this turn of the event loop brings (many submits). */
  private scheduleSoon(): void {
    this.scheduling ??= setImmediate(() => {
      this.scheduling = undefined;
      this.schedule();
    });
  }

  private scheduleNow(): void {
    const now = Date.now();
    const held = this.runner.held();
    const resting = this.runner.resting(now);
    const free = this.hosts.idle().filter((r) => !held.has(r.key) && !resting.has(r.key));
    const slots = Math.min(free.length, this.opts.maxWorkers - this.runner.size);
    if (slots > 0 && !this.spendLimits.holdsAll(now)) {
      // Tasks that fit no free agent, or that a reached spend limit covers, wait; those after
      // them are looked at (bounded). Groups at their max_parallel are passed over, and the
      // rest take only their room.
      const room = this.store.groupRoom();
      const full = [...room].filter(([, n]) => n === 0).map(([id]) => id);
      const queued = this.store.nextQueued(Math.min(MAX_SCHEDULE_SCAN, slots * 8 + 16), now, full);
      const unheld = queued.filter(
        (t) => this.spendLimits.holding(t.spec?.labels ?? {}, now).length === 0,
      );
      const tasks = this.groups.admit(unheld, room, now);
      const used = (host: string) => this.runner.usedOn(host);
      // A retried task waits for another agent rather than go back to one it failed on for
      // infrastructure, while another (busy or not) that could take it exists.
      const others = this.hosts.all().filter((r) => r.host.schedulable && !resting.has(r.key));
      const avoid = (t: Task) => {
        const failed = this.runner.avoided(t.id);
        if (!failed) return undefined;
        const fits = (r: AgentRef) => !r.host.info || !misfit(r.host.info, t.spec!);
        return others.some((r) => !failed.has(r.key) && fits(r)) ? failed : undefined;
      };
      const pairs = place(tasks, free, used, this.groups.spreading(tasks), avoid).slice(0, slots);
      for (const [task, ref] of pairs) this.runner.dispatch(task, ref, now);
    }
    clearTimeout(this.wakeTimer);
    // The next retry's backoff ends, a reached spend limit's window allows again, or an agent's
    // rest ends.
    const wakes = [
      this.store.nextWakeup(now),
      this.spendLimits.nextRelease(now),
      this.runner.nextRestEnd(now),
    ];
    const wake = Math.min(...wakes.filter((w) => w !== undefined));
    if (wake !== Infinity)
      this.wakeTimer = setTimeout(() => this.schedule(), Math.max(0, wake - now));
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
    clearImmediate(this.scheduling);
    await Promise.all([this.hosts.stop(), this.runner.close()]);
  }

  /** stopWork(), then closes the store; the store stays consistent. */
  async close(): Promise<void> {
    await this.stopWork();
    this.store.close();
    this.artifacts.close();
  }
}
