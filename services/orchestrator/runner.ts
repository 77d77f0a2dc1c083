import { setTimeout as delay } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentState } from "../../gen/conductor/v1/agent_pb.js";
import type { RunOutcome } from "../../gen/conductor/v1/agent_host_pb.js";
import {
  ErrorKind,
  StateChangeSchema,
  TaskResultSchema,
  TaskState,
  type Task,
  type TaskResult,
  type TaskEvent,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { precondition } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { neverRan, UnconfirmedAttempts, type AttemptEnd } from "./attempts.ts";
import { MAX_TASK_ARTIFACT_BYTES, type ArtifactStore } from "./artifacts.ts";
import type { TaskEvents } from "./events.ts";
import type { AgentRef, HostRegistry } from "./hosts.ts";
import type { OrchestratorObserver } from "./observer.ts";
import { boundOutput, boundResult } from "../shared/output-bounds.ts";
import { FINAL_STATES, type TaskStore } from "./store.ts";
import type { PreparedSpec, TaskTypeRegistry } from "./task-types.ts";
import { DEP_RESULT } from "./validate.ts";

/** How often a store that refuses to schedule is logged, at most. */
const REFUSED_LOG_INTERVAL_MS = 60_000;

/** What the AttemptRunner works with. */
export interface AttemptRunnerOptions {
  store: TaskStore;
  hosts: HostRegistry;
  events: TaskEvents;
  /** The whole of outputs and results that events carry cut short. */
  artifacts: ArtifactStore;
  /** Builds what each attempt runs from the task's type and params. */
  types: TaskTypeRegistry;
  observer?: OrchestratorObserver | undefined;
  log: Logger;
  retryBackoffMs: number;
  rpcTimeoutMs: number;
  /** How long an attempt whose AgentHost is silent is waited for before it is taken as over. */
  unconfirmedAttemptTimeoutMs: number;
  /** How long a joined node is waited for to report a run it no longer lists (its lease). */
  reportGraceMs?: number | undefined;
  /** Called whenever an attempt lets go of its agent (the scheduler looks for work). */
  onRelease: () => void;
  /**
   * The spec an attempt of the task runs (its dependencies' results filled in, its group's
   * limits applied); the task's own spec when not given.
   */
  prepare?: (task: Task) => TaskSpec;
}

/** An attempt being followed: its stream, or its wait for confirmation; it holds its agent. */
interface ActiveRun {
  /** `<host>#<agent>`, as HostRegistry keys agents. */
  key: string;
  /** The AgentHost's address (HostLink.address). */
  host: string;
  agentId: string;
  /** What the attempt's task asked of its node (TaskSpec.resources). */
  cpus: number;
  memoryBytes: bigint;
  abort: AbortController;
  cancelRequested: boolean;
  /** Its outcome is decided and waits for the store (a full disk): too late to cancel. */
  holding: boolean;
  done: Promise<void>;
  /** The task's result from the attempts before this one (what they spent, checked, resumed). */
  before: TaskResult | undefined;
}

/** What a RunTask stream gave before it ended. */
interface Streamed {
  started: boolean;
  /** When the run started and ended (performance.now(), ms: a clock set back does not count). */
  startedAt: number;
  endedAt: number;
  outcome?: RunOutcome;
  error?: ConnectError;
  /** Output events the store refused (a full disk), dropped. */
  dropped: number;
  /** Why the first of them was refused. */
  droppedError: string;
  /** The last store write the stream asked for; it settles after all the ones before it. */
  lastWrite: Promise<unknown>;
}

const ACTIVE = [TaskState.SCHEDULED, TaskState.RUNNING];

/** An outcome the store refused (a full disk) is tried again after this, doubling… */
const STORE_RETRY_FIRST_MS = 250;
/** …up to this between tries, until it is stored or the Orchestrator stops. */
const STORE_RETRY_MAX_MS = 10_000;

/** Runs in a row an agent may end with an INFRASTRUCTURE failure before it rests. */
export const REST_AFTER = 3;
/** A first rest (ms); each further such failure in a row doubles it, up to REST_MAX_MS. */
export const REST_MS = 30_000;
const REST_MAX_MS = 300_000;
/** Tasks whose failed agents are remembered for their retries, at most. */
const MAX_AVOIDING = 10_000;

/**
 * Runs attempts on agents and decides what follows each: the outcome, a retry with backoff,
 * or a requeue when the agent refused before running. An attempt whose AgentHost was lost is
 * followed until it is known to be over (UnconfirmedAttempts) before anything else happens, so
 * an attempt never runs twice; the same after a restart, for tasks found running.
 */
export class AttemptRunner {
  private readonly runs = new Map<string, ActiveRun>();
  /**
   * Agents (keys) whose last runs ended in INFRASTRUCTURE failures: how many in a row, and
   * until when (ms since the epoch) they rest, given no task, once there were REST_AFTER.
   */
  private readonly failing = new Map<string, { streak: number; until: number }>();
  /** A queued task's agents (keys) an attempt of it failed on for INFRASTRUCTURE. */
  private readonly failedOn = new Map<string, Set<string>>();
  private readonly unconfirmed: UnconfirmedAttempts;
  private closed = false;
  /** Aborted by close(): ends the waits between tries to store an outcome. */
  private readonly stopping = new AbortController();
  private readonly opts: AttemptRunnerOptions;

  constructor(opts: AttemptRunnerOptions) {
    this.opts = opts;
    this.unconfirmed = new UnconfirmedAttempts(opts.hosts, {
      timeoutMs: opts.unconfirmedAttemptTimeoutMs,
      reportGraceMs: opts.reportGraceMs,
      rpcTimeoutMs: opts.rpcTimeoutMs,
      log: opts.log,
    });
  }

  /** Schedules the store refused since the last time that was logged, and when that was. */
  private refusedSchedules = 0;
  private refusedLoggedAt = -Infinity;

  /** Attempts followed now (running, or waiting for their host's word). */
  get size(): number {
    return this.runs.size;
  }

  /** The agents attempts hold (HostRegistry keys): not to be given another task. */
  held(): Set<string> {
    return new Set([...this.runs.values()].map((r) => r.key));
  }

  /**
   * Agents (keys) resting at `now`: each ended its last REST_AFTER or more runs with an
   * INFRASTRUCTURE failure (a sandbox that will not start, a workspace that is gone), so
   * it fails fast and would take the queue's tasks one after another. It rests 30 s, then
   * twice as long after each further such failure, up to 5 min; any other end resets it.
   */
  resting(now: number): Set<string> {
    const keys = new Set<string>();
    for (const [key, f] of this.failing) if (f.until > now) keys.add(key);
    return keys;
  }

  /**
   * Ends agent `key`'s rest, if it rests: it came back from FAILED (its engine answers again,
   * or its sandbox was replaced), so what failed its runs may be over. Its count of failures
   * stands: one more rests it again, twice as long.
   */
  endRest(key: string): void {
    const f = this.failing.get(key);
    if (!f || f.until <= Date.now()) return;
    f.until = 0;
    this.opts.log.info("agent rests no more: it is back", { agent: key });
  }

  /** When the next rest ends after `now` (ms since the epoch), if one does. */
  nextRestEnd(now: number): number | undefined {
    let next: number | undefined;
    for (const f of this.failing.values())
      if (f.until > now && (next === undefined || f.until < next)) next = f.until;
    return next;
  }

  /** The agents (keys) a queued task's earlier attempts failed on for INFRASTRUCTURE. */
  avoided(taskId: string): ReadonlySet<string> | undefined {
    return this.failedOn.get(taskId);
  }

  /** Notes how an attempt ended for its agent's health, and for the task's next placement. */
  private noteEnd(
    id: string,
    run: ActiveRun,
    state: TaskState,
    kind: ErrorKind,
    retried: boolean,
    now: number,
    log: Logger,
  ): void {
    if (state === TaskState.FAILED && kind === ErrorKind.INFRASTRUCTURE) {
      const streak = (this.failing.get(run.key)?.streak ?? 0) + 1;
      let until = 0;
      if (streak >= REST_AFTER) {
        until = now + Math.min(REST_MAX_MS, REST_MS * 2 ** (streak - REST_AFTER));
        log.warn("agent rests: its runs keep failing for infrastructure", {
          agent: run.agentId,
          host: run.host,
          failures_in_a_row: streak,
          rest_seconds: (until - now) / 1000,
        });
      }
      this.failing.set(run.key, { streak, until });
      if (retried) {
        const keys = this.failedOn.get(id) ?? new Set<string>();
        this.failedOn.delete(id);
        this.failedOn.set(id, keys.add(run.key));
        if (this.failedOn.size > MAX_AVOIDING)
          this.failedOn.delete(this.failedOn.keys().next().value!);
      }
    } else if (state !== TaskState.CANCELLED) {
      this.failing.delete(run.key);
    }
    if (!retried) this.failedOn.delete(id);
  }

  /** Resources the attempts on a host (HostLink.address) asked for, together. */
  usedOn(host: string): { cpus: number; memoryBytes: bigint } {
    let cpus = 0;
    let memoryBytes = 0n;
    for (const r of this.runs.values()) {
      if (r.host !== host) continue;
      cpus += r.cpus;
      memoryBytes += r.memoryBytes;
    }
    return { cpus, memoryBytes };
  }

  /** A node's report of how an attempt whose stream was gone ended; false if none waited. */
  reported(host: string, taskId: string, attempt: number, outcome: RunOutcome): boolean {
    if (this.unconfirmed.report(host, taskId, attempt, outcome)) return true;
    // The node's end of the stream broke before this one saw it break: the report ends it.
    const run = this.runs.get(taskId);
    if (!run || run.host !== host || run.holding) return false;
    this.unconfirmed.keepEarly(host, taskId, attempt, outcome);
    run.abort.abort();
    return true;
  }

  /** Decides unconfirmed attempts from the latest poll of the hosts; call after each poll. */
  checkUnconfirmed(now: number): void {
    if (!this.closed) this.unconfirmed.check(now);
  }

  /** Starts a queued task's next attempt on an agent. */
  dispatch(task: Task, ref: AgentRef, now: number): void {
    const { store, events, observer, log } = this.opts;
    const attempt = task.attempts + 1;
    const update = { agentId: ref.agent.id, host: ref.host.address, attempts: attempt };
    const change = { state: TaskState.SCHEDULED, agentId: ref.agent.id, attempt };
    try {
      if (!events.transition(task.id, [TaskState.QUEUED], update, change, now)) return;
    } catch (e) {
      // Nothing was stored: the task stays queued for a later schedule. Said once a minute at
      // most (a full disk fails every schedule, every second), with how often it happened.
      this.refusedSchedules++;
      if (now - this.refusedLoggedAt >= REFUSED_LOG_INTERVAL_MS) {
        log.warn("could not schedule tasks; they stay queued", {
          task_id: task.id,
          error: e,
          times_since_last_said: this.refusedSchedules,
        });
        this.refusedLoggedAt = now;
        this.refusedSchedules = 0;
      }
      return;
    }
    ref.agent.state = AgentState.BUSY;
    ref.agent.taskId = task.id;
    const run = this.track(task.id, ref.host.address, ref.agent.id, task);
    const execute = () => this.execute(task, attempt, run, ref);
    const info = {
      taskId: task.id,
      type: task.spec?.type || "generic",
      model: task.spec?.model ?? "",
      attempt,
      agentId: ref.agent.id,
      node: ref.agent.nodeId,
      traceParent: store.meta(task.id)?.traceParent ?? "",
    };
    run.done = (observer ? observer.attempt(info, execute) : execute())
      .catch((e: unknown) =>
        log.error("the attempt failed unexpectedly", { task_id: task.id, error: e }),
      )
      .finally(() => {
        if (ref.agent.state === AgentState.BUSY) ref.agent.state = AgentState.IDLE;
        ref.agent.taskId = "";
        ref.agent.tasksCompleted++;
        // A poll during the run gave the host's list a copy of the agent, BUSY with this task:
        // it is free now (not for a second, until the next poll says so).
        const listed = ref.host.agents.find((a) => a.id === ref.agent.id);
        if (listed?.state === AgentState.BUSY && listed.taskId === task.id) {
          listed.state = AgentState.IDLE;
          listed.taskId = "";
          listed.tasksCompleted++;
        }
        this.release(task.id);
      });
  }

  /**
   * Takes up tasks a stop interrupted: each waits, holding its agent, until its recorded
   * AgentHost confirms the attempt is over, then is retried or failed. A row naming no host (a
   * database from before hosts were recorded) is retried or failed at once, as it always was.
   */
  recover(): void {
    const { store, log } = this.opts;
    for (const task of store.inStates(ACTIVE)) {
      const max = store.maxAttempts(task.id);
      const what = `the orchestrator stopped during attempt ${task.attempts} of ${max}`;
      const host = store.attemptHost(task.id);
      log.warn("recovered an interrupted task", {
        task_id: task.id,
        attempts: task.attempts,
        host: host || undefined,
      });
      const run = this.track(task.id, host, task.agentId, task);
      const attemptLog = log.child({
        task_id: task.id,
        agent_id: task.agentId,
        attempt: task.attempts,
      });
      const ended: Promise<AttemptEnd> = host
        ? this.awaitEnd(task.id, task.attempts, run, task.state, `${what}, on agent host ${host}`)
        : Promise.resolve({ kind: "confirmed", reason: "" });
      run.done = ended
        .then(async (end) => {
          if (end.kind === "closed") return;
          const outcome =
            end.kind === "reported"
              ? end.outcome
              : lost(
                  end.kind === "cancelled"
                    ? "the run was stopped"
                    : `interrupted: ${what}${end.reason ? `; ${end.reason}` : ""}`,
                  run.before,
                );
          await this.finish(task.id, task.attempts, outcome, run, undefined, attemptLog);
        })
        .catch((e: unknown) => attemptLog.error("recovery failed unexpectedly", { error: e }))
        .finally(() => this.release(task.id));
    }
  }

  /** Ends a task's attempt for CancelTask; resolves once the task has its final state. */
  async cancel(id: string): Promise<void> {
    const run = this.runs.get(id);
    if (!run) return;
    if (run.holding) {
      throw precondition(
        `task ${id} has already ended on its agent; its outcome waits for space on the disk to be stored, and will be (nothing to cancel)`,
      );
    }
    run.cancelRequested = true;
    // An attempt waiting for its lost host ends at once (CancelRun goes to the host best effort).
    if (!this.unconfirmed.cancel(id)) {
      try {
        const client = this.opts.hosts.link(run.host)?.client;
        if (!client) throw new Error(`agent host ${run.host} is not configured`);
        await client.cancelRun({ taskId: id }, { timeoutMs: this.opts.rpcTimeoutMs });
      } catch {
        run.abort.abort(); // not started on the host yet, or the host is gone: drop the stream
      }
    }
    await run.done;
  }

  /** Ends every stream and wait; tasks keep their state for recovery on restart. */
  async close(): Promise<void> {
    this.closed = true;
    this.stopping.abort();
    for (const run of this.runs.values()) run.abort.abort();
    await this.unconfirmed.close();
    await Promise.all([...this.runs.values()].map((r) => r.done));
  }

  private track(id: string, host: string, agentId: string, task: Task): ActiveRun {
    const run: ActiveRun = {
      key: `${host}#${agentId}`,
      host,
      agentId,
      cpus: task.spec?.resources?.cpus ?? 0,
      memoryBytes: task.spec?.resources?.memoryBytes ?? 0n,
      abort: new AbortController(),
      cancelRequested: false,
      holding: false,
      done: Promise.resolve(),
      before: task.result,
    };
    this.runs.set(id, run);
    return run;
  }

  private release(id: string): void {
    this.runs.delete(id);
    this.opts.store.forgetEvents(id);
    if (!this.closed) this.opts.onRelease();
  }

  /**
   * Runs one attempt and sorts how it ended: an outcome; a refusal before the run (requeued at
   * once, not an attempt); or a lost host (waited for until the attempt is known to be over).
   */
  private async execute(task: Task, attempt: number, run: ActiveRun, ref: AgentRef) {
    const log = this.opts.log.child({ task_id: task.id, agent_id: run.agentId, attempt });
    const s = await this.stream(task, attempt, run, ref);
    if (this.closed && !s.outcome) return; // shutting down: recovery decides on restart
    let outcome = s.outcome;
    if (!outcome && run.cancelRequested) outcome = lost("the run was stopped", run.before);
    if (!outcome && s.error && neverRan(s.error, s.started)) {
      await this.bounce(task.id, attempt, ref, s.error, log);
      return;
    }
    if (!outcome) {
      const why = s.error
        ? `${Code[s.error.code]}: ${s.error.rawMessage}`
        : "the run ended without an outcome";
      const state = s.started ? TaskState.RUNNING : TaskState.SCHEDULED;
      const joined = this.opts.hosts.link(run.host)?.joined !== undefined;
      const what = joined
        ? `the stream from node ${run.host} broke during attempt ${attempt} (${why}); the run goes on there while the node holds its lease`
        : `lost agent host ${run.host} during attempt ${attempt} (${why})`;
      log.warn("lost the agent host during the run", { host: run.host, error: why });
      const end = await this.awaitEnd(task.id, attempt, run, state, what);
      if (end.kind === "closed") return;
      outcome =
        end.kind === "reported"
          ? end.outcome
          : lost(
              end.kind === "cancelled"
                ? "the run was stopped"
                : `lost the agent host during the run (${why}); ${end.reason}`,
              run.before,
            );
    }
    await s.lastWrite; // every write asked for during the stream has settled (in order)
    if (s.dropped > 0)
      log.warn("output the store refused was dropped", { dropped_events: s.dropped });
    const dropped = { count: s.dropped, error: s.droppedError };
    await this.finish(
      task.id,
      attempt,
      outcome,
      run,
      Math.round(s.endedAt - s.startedAt),
      log,
      dropped,
    );
  }

  /** Follows a RunTask stream to its end; never throws (a broken stream is in `error`). */
  private async stream(task: Task, attempt: number, run: ActiveRun, ref: AgentRef) {
    const { events, log } = this.opts;
    const s: Streamed = {
      started: false,
      startedAt: performance.now(),
      endedAt: 0,
      dropped: 0,
      droppedError: "",
      lastWrite: Promise.resolve(),
    };
    let prepared: PreparedSpec;
    try {
      // Dependencies' results (and a group's members' outcomes and budget) go into the spec
      // first, then the type builds on it.
      const spec = this.opts.prepare
        ? this.opts.prepare(task)
        : withDependencyResults(task.spec!, (id) => this.opts.store.get(id)?.result?.text);
      prepared = this.opts.types.prepare(spec);
    } catch (e) {
      // Checked at submit: only a type configured away since (a restart) gets here.
      const why = e instanceof ConnectError ? e.rawMessage : String(e);
      s.outcome = unpreparable(`the task's type cannot build its attempt: ${why}`, run.before);
      s.endedAt = performance.now();
      return s;
    }
    try {
      const stream = ref.host.client.runTask(
        {
          agentId: run.agentId,
          taskId: task.id,
          attempt,
          spec: prepared.spec,
          resultSchema: prepared.resultSchema,
          // A check that failed there makes the host resume that attempt's session.
          ...(task.result ? { previousResult: task.result } : {}),
        },
        { signal: run.abort.signal },
      );
      // The whole of the next output or outcome, when the host sent it cut (bounded per task).
      let whole: string[] = [];
      let wholeChars = 0;
      const takeWhole = (cutHere: string | undefined) => {
        // A whole over the per-task bound was never going to be kept: none of it is.
        const taken =
          wholeChars > MAX_TASK_ARTIFACT_BYTES
            ? undefined
            : whole.length > 0
              ? whole.join("")
              : cutHere;
        whole = [];
        wholeChars = 0;
        return taken;
      };
      for await (const res of stream) {
        const now = Date.now();
        switch (res.kind.case) {
          case "wholePiece":
            wholeChars += res.kind.value.text.length;
            if (wholeChars <= MAX_TASK_ARTIFACT_BYTES) whole.push(res.kind.value.text);
            break;
          case "started": {
            s.started = true;
            s.startedAt = performance.now();
            const change = { state: TaskState.RUNNING, agentId: run.agentId, attempt };
            s.lastWrite = events
              .transitionBatched(task.id, [TaskState.SCHEDULED], { startTime: now }, change, now)
              .catch((e: unknown) => {
                // The run goes on; its outcome is what must be stored (finish() insists).
                log.warn("could not store that the run started", { task_id: task.id, error: e });
              });
            break;
          }
          case "output": {
            // A long line is cut to fit any client (by the host, and again here in case it
            // did not); its whole is kept for GetTaskOutput.
            const kept = takeWhole(boundOutput(res.kind.value));
            // Stored in the next group commit, in order; watchers see it once it is on disk.
            s.lastWrite = events
              .appendBatched(task.id, { case: "output", value: res.kind.value }, now)
              .then(
                (event) => {
                  if (kept !== undefined)
                    this.opts.artifacts.keep(task.id, Number(event.seq), kept);
                },
                (e: unknown) => {
                  // Output is not kept in memory for later (it is unbounded): dropped, counted.
                  if (s.dropped++ === 0) {
                    s.droppedError = e instanceof Error ? e.message : String(e);
                    log.warn("could not store the run's output", { task_id: task.id, error: e });
                  }
                },
              );
            break;
          }
          case "outcome": {
            s.outcome = res.kind.value;
            if (prepared.resultSchema) unanswered(s.outcome);
            const kept = takeWhole(undefined);
            if (kept !== undefined) this.opts.artifacts.keep(task.id, 0, kept);
            break;
          }
        }
      }
    } catch (e) {
      // A break after the outcome is moot: the outcome is the host's word that the run ended.
      s.error = ConnectError.from(e);
    }
    s.endedAt = performance.now();
    return s;
  }

  /**
   * Waits until an attempt whose host was lost is known to be over. The task keeps its state
   * and the attempt its agent meanwhile; watchers are told why nothing happens.
   */
  private awaitEnd(
    id: string,
    attempt: number,
    run: ActiveRun,
    state: TaskState,
    what: string,
  ): Promise<AttemptEnd> {
    const now = Date.now();
    const joined = this.opts.hosts.link(run.host)?.joined !== undefined;
    const reason = joined
      ? `${what}; waiting for the node to report how it ends`
      : `${what}; waiting for it to confirm the attempt has ended before retrying`;
    try {
      this.opts.events.note(id, { state, agentId: run.agentId, attempt, reason }, now);
    } catch (e) {
      this.opts.log.warn("could not store the notice to watchers", { task_id: id, error: e });
    }
    this.opts.observer?.attemptUnconfirmed({
      taskId: id,
      attempt,
      host: run.host,
      reason,
      at: now,
    });
    const place = { taskId: id, attempt, host: run.host, agentId: run.agentId };
    return this.unconfirmed.wait(place, now);
  }

  /**
   * Records an attempt's outcome: the task ends, or is queued again when attempts are left.
   * `runMs` is undefined for an attempt this process did not see run (found after a restart).
   * An outcome the store refuses (a full disk) is kept and stored once it can be; `dropped`
   * output events the store refused are owned up to in a note before it.
   */
  private async finish(
    id: string,
    attempt: number,
    outcome: RunOutcome,
    run: ActiveRun,
    runMs: number | undefined,
    log: Logger,
    dropped: { count: number; error: string } = { count: 0, error: "" },
  ): Promise<void> {
    const { store, events } = this.opts;
    const now = Date.now();
    const notes: TaskEvent["kind"][] = [];
    if (dropped.count > 0) {
      const reason = `${dropped.count} lines of the agent's output are missing: they could not be stored (${dropped.error})`;
      notes.push({
        case: "stateChange",
        value: create(StateChangeSchema, {
          state: TaskState.RUNNING,
          agentId: run.agentId,
          attempt,
          reason,
        }),
      });
    }
    const result = outcome.result ?? create(TaskResultSchema, {});
    // An AgentHost's figure is not trusted to be one a sum or a counter can take (Infinity from
    // an upstream's absurd usage would make every later sum of the task NaN).
    result.costUsd = boundedUsd(result.costUsd);
    const whole = boundResult(result);
    if (whole !== undefined) this.opts.artifacts.keep(id, 0, whole);
    let state = outcome.state;
    if (!FINAL_STATES.has(state)) {
      // An AgentHost's outcome is not trusted to be one: a run that "ended" RUNNING failed.
      result.isError = true;
      result.error = `the agent host reported the attempt ended in state ${TaskState[state] ?? state}, which is not an end`;
      result.errorKind = ErrorKind.INFRASTRUCTURE;
      state = TaskState.FAILED;
    }
    if (run.cancelRequested && state !== TaskState.SUCCEEDED) {
      state = TaskState.CANCELLED;
      result.error = "cancelled while running";
      result.errorKind = ErrorKind.CANCELLED;
    } else if (state === TaskState.CANCELLED) {
      state = TaskState.FAILED;
      result.error = "the run was stopped on the agent host (agent stopped)";
      result.errorKind = ErrorKind.INFRASTRUCTURE;
    }
    if (runMs !== undefined)
      this.opts.observer?.attemptEnded({
        taskId: id,
        attempt,
        state,
        runMs,
        result,
        before: run.before,
      });
    const maxAttempts = store.maxAttempts(id);
    const permanent = outcome.permanent || NOT_RETRIED.has(result.errorKind);
    const kind = result.errorKind ? ` (${ErrorKind[result.errorKind]})` : "";
    if (state === TaskState.FAILED && permanent && attempt < maxAttempts) {
      result.error += `; not retried (attempt ${attempt} of ${maxAttempts}): another attempt cannot succeed${kind}`;
    }
    const retried = state === TaskState.FAILED && attempt < maxAttempts && !permanent;
    this.noteEnd(id, run, state, result.errorKind, retried, now, log);
    if (retried) {
      const backoff = Math.min(60_000, this.opts.retryBackoffMs * 2 ** (attempt - 1));
      const update = { host: "", notBefore: now + backoff, result };
      const reason = `attempt ${attempt} of ${maxAttempts} failed: ${result.error}; retrying in ${backoff / 1000} s${kind}`;
      const change = { state: TaskState.QUEUED, attempt, reason };
      run.holding = true;
      await this.durably("the attempt's outcome", log, async () => {
        if (await events.transitionBatched(id, ACTIVE, update, change, now, notes))
          log.warn("attempt failed, retrying", { error: result.error, backoff_ms: backoff });
      });
      return;
    }
    run.holding = true;
    const change = { state, agentId: run.agentId, attempt, reason: result.error };
    const before: TaskEvent["kind"][] = [...notes, { case: "result", value: result }];
    await this.durably("the task's outcome", log, async () => {
      const update = { endTime: now, result, runMs };
      if (await events.transitionBatched(id, ACTIVE, update, change, now, before))
        log.info("task ended", {
          state: `TASK_STATE_${TaskState[state]}`,
          error: result.error || undefined,
        });
    });
  }

  /**
   * Runs a store write until it succeeds, waiting between tries (bounded backoff): an
   * outcome is kept while the disk is full and stored once space returns, never replaced by
   * another. Only a stop ends the tries; recovery then decides on restart.
   */
  private async durably(
    what: string,
    log: Logger,
    write: () => void | Promise<void>,
  ): Promise<void> {
    for (let tries = 1, wait = STORE_RETRY_FIRST_MS; ; tries++) {
      try {
        await write();
        if (tries > 1) log.info(`stored ${what} after ${tries} tries`);
        return;
      } catch (e) {
        if (this.closed) {
          log.error(`could not store ${what}; stopping, so recovery decides on restart`, {
            error: e,
          });
          return;
        }
        if (tries === 1)
          log.error(`could not store ${what}; keeping it and trying again`, { error: e });
      }
      try {
        await delay(wait, undefined, { signal: this.stopping.signal });
      } catch {
        // stopping: one last try, then give up (above)
      }
      wait = Math.min(wait * 2, STORE_RETRY_MAX_MS);
    }
  }

  /** Puts a task the agent refused back in the queue, and keeps the agent out until the next poll. */
  private async bounce(id: string, attempt: number, ref: AgentRef, err: ConnectError, log: Logger) {
    ref.agent.state = AgentState.FAILED;
    log.warn("agent did not take the task; requeued", {
      code: Code[err.code],
      error: err.rawMessage,
    });
    const update = { host: "", attempts: attempt - 1 };
    const reason = `agent ${ref.agent.id} could not start it (${err.rawMessage}); requeued`;
    const change = { state: TaskState.QUEUED, attempt: attempt - 1, reason };
    await this.durably("the requeue", log, () => {
      this.opts.events.transition(id, [TaskState.SCHEDULED], update, change, Date.now());
    });
  }
}

/** Most characters of one dependency's result put into a prompt ({{deps.ID.result}}). */
const MAX_DEP_RESULT_CHARS = 64 * 1024;

/**
 * The spec with every `{{deps.ID.result}}` in its prompt replaced by that dependency's result
 * text (at most MAX_DEP_RESULT_CHARS of it; empty for one without a result).
 */
export function withDependencyResults(
  spec: TaskSpec,
  resultOf: (id: string) => string | undefined,
): TaskSpec {
  if (spec.dependsOn.length === 0 || !spec.prompt.includes("{{deps.")) return spec;
  const prompt = spec.prompt.replace(DEP_RESULT, (_, id: string) =>
    (resultOf(id) ?? "").slice(0, MAX_DEP_RESULT_CHARS),
  );
  return { ...spec, prompt };
}

/** Failures of these kinds are not retried: the same request fails again (TaskResult.error_kind). */
const NOT_RETRIED: ReadonlySet<ErrorKind> = new Set([
  ErrorKind.INVALID_REQUEST,
  ErrorKind.BUDGET,
  ErrorKind.DEPENDENCY,
  ErrorKind.CANCELLED,
]);

/**
 * Fails a success without the structured answer its type's schema asks for: an AgentHost of a
 * version before task types runs the CLI without the schema and never checks one.
 */
function unanswered(outcome: RunOutcome): void {
  if (outcome.state !== TaskState.SUCCEEDED || outcome.result?.structured !== undefined) return;
  outcome.state = TaskState.FAILED;
  outcome.result ??= create(TaskResultSchema, {});
  outcome.result.isError = true;
  outcome.result.error =
    "the agent host gave no structured answer, which the task's type asks for (is it a version without task types? upgrade it)";
  outcome.result.errorKind = ErrorKind.INFRASTRUCTURE;
}

/** An attempt that cannot be built (its type is gone): failed, not retried. */
function unpreparable(error: string, before: TaskResult | undefined): RunOutcome {
  return failed(error, ErrorKind.INVALID_REQUEST, true, before);
}

/** An attempt that ended without its outcome (its host or node lost, or stopped). */
function lost(error: string, before: TaskResult | undefined): RunOutcome {
  return failed(error, ErrorKind.INFRASTRUCTURE, false, before);
}

/**
 * A FAILED outcome the Orchestrator decided itself, saying why. The attempt adds nothing to what
 * the attempts before it gave (`before`, the task's result from the last of them), which stays
 * the task's as in an outcome an AgentHost tells: the tokens and cost spent so far (a task's and
 * a group's budget count them), the checks that ran, the session the next attempt resumes when
 * the last of them failed, and the change on the task's branch.
 */
function failed(
  error: string,
  errorKind: ErrorKind,
  permanent: boolean,
  before: TaskResult | undefined,
): RunOutcome {
  const result = create(TaskResultSchema, { isError: true, error, errorKind });
  if (before) {
    if (before.usage) result.usage = before.usage;
    result.costUsd = before.costUsd;
    result.checks = before.checks;
    result.sessionId = before.sessionId;
    if (before.change) result.change = before.change;
  }
  return { $typeName: "conductor.v1.RunOutcome", state: TaskState.FAILED, result, permanent };
}

/** Most US dollars a task's result may say it spent: $10^9 (more is an absurd report). */
const MAX_TASK_USD = 1e9;

/** A cost as the Orchestrator keeps it: 0 to MAX_TASK_USD (NaN 0, Infinity MAX_TASK_USD). */
function boundedUsd(usd: number): number {
  return usd > 0 ? Math.min(usd, MAX_TASK_USD) : 0;
}
