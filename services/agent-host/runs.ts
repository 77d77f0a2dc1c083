import { randomBytes } from "node:crypto";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import {
  ErrorKind,
  TaskResultSchema,
  TaskState,
  UsageSchema,
  type AgentOutput,
  type TaskResult,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import type { Capabilities, RuntimeBackend, SandboxStatus } from "../../plugins/runtime.ts";
import type { AgentOwner } from "../shared/agent-files.ts";
import type { Logger } from "../shared/log.ts";
import { checkFailure, fixPrompt, MAX_CHECK_RESULTS, runChecks } from "./checks.ts";
import type { MeteredUsage, RunBudget } from "./model-proxy.ts";
import { FORWARDER_PORT, type AgentParts } from "./provision.ts";
import { noticeOutput, type BrokerToolsCheck } from "./broker-tools.ts";
import {
  claudeEnv,
  runClaude,
  type OutputFlow,
  type Resume,
  type RunOutcome,
  type RunPlace,
  type RunSettings,
} from "./run.ts";
import {
  carrySession,
  emptyDir,
  keepSession,
  resetConfig,
  sessionStore,
  trashOf,
} from "./sessions.ts";
import {
  changeProto,
  openPlace,
  placeErrorPermanent,
  rmEmpty,
  type PlaceContext,
  type TaskPlace,
} from "./task-place.ts";
import { workNotSavable } from "./workspace/git-failure.ts";
import type { Watched } from "./supervise.ts";
import type { AgentHostObserver } from "./telemetry.ts";
import { int64 } from "../shared/proto-numbers.ts";

/** An agent as the AgentHost holds it: its parts, its state, and the run under way. */
export interface AgentSlot extends Watched, AgentParts {
  agent: Agent;
  dir: string;
  /** Who owns what the agent may write, when not this service's user. */
  owner: AgentOwner | undefined;
  run?: {
    taskId: string;
    attempt: number;
    abort: AbortController;
    done: Promise<RunOutcome>;
    /**
     * Set once the run's outcome went out at its result line (executeRun): settles when what
     * still ran of it is ended and the agent is free again.
     */
    reaping?: Promise<void>;
  };
}

/** What running a task on an agent takes from its AgentHost. */
export interface RunContext {
  backend: RuntimeBackend;
  caps: Capabilities;
  settings: RunSettings;
  /** PATH of runs on runtimes without an image. */
  hostPath: string;
  workspacePolicy: "keep" | "clean";
  log: Logger;
  observer?: AgentHostObserver | undefined;
  /** Whether a run gets the Broker's tools (when the agent has a Broker configured). */
  brokerTools?: BrokerToolsCheck | undefined;
  /** Told of an engine call that failed while a failed run was being explained. */
  engineFailed(slot: AgentSlot, e: unknown): void;
  /**
   * Told when a failed run found its agent's sandbox dead, before the agent is freed: it is
   * replaced, not given the next task (the engine's own report of the death may come later).
   */
  sandboxDied(slot: AgentSlot, status: SandboxStatus): void;
  /** Task workspaces (git worktrees, host folders) of this node. */
  place: PlaceContext;
  /** Where the agents' folders are (a resumed session may come from any of them). */
  agentsDir: string;
  /** A check naming no timeout of its own gets this long. */
  checkTimeoutMs: number;
  /**
   * A joined node's: a run whose lifeline gets no tick for this long ends by itself
   * (CONDUCTOR_RUN_LIFELINE_IDLE_MS; lifeline.ts). Undefined: only its closing ends it.
   */
  lifelineIdleMs?: number | undefined;
}

/** Exec environment naming how long a run's lifeline may stay silent (see RunContext). */
export const LIFELINE_IDLE_VARIABLE = "CONDUCTOR_RUN_LIFELINE_IDLE_MS";

/** Why an AgentHost ended a run itself (not its caller's cancel): the run fails with it. */
export class RunEnded extends Error {}

/** One attempt of a task, as RunTask asks for it. */
export interface Attempt {
  taskId: string;
  attempt: number;
  spec: TaskSpec;
  /** The previous attempt's result: a failed check there makes this one resume its session. */
  previous?: TaskResult | undefined;
  /** JSON Schema (JSON text) the answer must match (RunTaskRequest.result_schema); empty: none. */
  resultSchema?: string | undefined;
}

/** How long a failed run waits for the engine to report its container's death. */
const DEATH_NOTICE_MS = 2000;
/** The same once the runtime has killed the container itself: its end is sure, if slow to show. */
const KILLED_NOTICE_MS = 30_000;
/**
 * A run's own key, the only one its agent's proxy takes while it runs (ModelProxy.limit): the
 * CLI insists on some key, and the real one is added by the proxy, outside the sandbox. 24
 * random bytes, so that no other run, earlier or to come, holds or can guess it.
 */
function runKey(): string {
  return `sk-conductor-run-${randomBytes(24).toString("base64url")}`;
}

/**
 * Runs one task on an agent already marked BUSY: the CLI through the backend's exec, the
 * model through the agent's proxy, the run held by its lifeline (cut when it ends, so nothing
 * of it outlives it, engine or no engine); the agent is IDLE again after, unless it was lost.
 */
export async function executeRun(
  c: RunContext,
  slot: AgentSlot,
  attempt: Attempt,
  signal: AbortSignal,
  onOutput: (o: AgentOutput) => void,
  flow?: OutputFlow,
): Promise<RunOutcome> {
  const { taskId, spec } = attempt;
  const agentId = slot.agent.id;
  const scratch = slot.agent.workspace;
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  signal.addEventListener("abort", onAbort);
  if (signal.aborted) abort.abort(); // meanwhile (an abort event comes only once)
  slot.proxy.take();
  const key = runKey();
  slot.proxy.limit(runBudget(spec, attempt.previous), key);
  const log = c.log.child({ agent_id: agentId, task_id: taskId });
  log.info("run started");
  const settings: RunSettings = {
    ...c.settings,
    // Every runtime reaches the model through the proxy: the key never enters a sandbox.
    apiKey: key,
    baseUrl: `http://127.0.0.1:${FORWARDER_PORT}`,
  };
  const configDir = path.join(slot.dir, "claude-config");
  const runCli = async (): Promise<RunOutcome> => {
    // The caller's word that the run started (RunTask's first message) leaves first: what
    // follows blocks the event loop for milliseconds at a time (a spawn waits for its exec).
    await new Promise((resolve) => setImmediate(resolve));
    const started = Date.now();
    let taskPlace: TaskPlace;
    try {
      await resetConfig(configDir);
      if (c.workspacePolicy === "clean" && !spec.workspace?.kind.case)
        await emptyDir(scratch, trashOf(slot.dir));
      taskPlace = await openPlace(
        c.place,
        { agentId, agentDir: slot.dir, scratch, owner: slot.owner },
        taskId,
        attempt.attempt,
        spec,
        abort.signal,
      );
    } catch (e) {
      log.warn("the task's workspace could not be opened", { error: e });
      const outcome = placeFailed(e, started);
      if (abort.signal.aborted) {
        outcome.state = TaskState.CANCELLED;
        outcome.result.error = "cancelled while its workspace was being prepared";
        outcome.result.errorKind = ErrorKind.CANCELLED;
      }
      // The change of the attempts before stays the task's (diff, apply).
      if (attempt.previous?.change) outcome.result.change = attempt.previous.change;
      return outcome;
    }
    const place: RunPlace = {
      agentId,
      taskId,
      workspace: taskPlace.cwd,
      configDir,
      agentDir: slot.dir,
      mounts: taskPlace.mounts,
    };
    slot.lifeline?.arm();
    let outcome: RunOutcome;
    let cliEnded: TaskState;
    let resumed: string | undefined;
    try {
      ({ outcome, cliEnded, resumed } = await runInPlace(place, taskPlace));
    } finally {
      // Nothing of the run outlives it, whatever the engine says (or cannot).
      slot.lifeline?.cut();
    }
    // Ended because its engine was lost (not cancelled by its caller): that is a failure.
    if (slot.lost && !signal.aborted && outcome.state === TaskState.CANCELLED) {
      outcome.state = TaskState.FAILED;
      outcome.result.errorKind = ErrorKind.INFRASTRUCTURE;
    }
    // Ended by its AgentHost for a reason of its own (self-fencing): a failure, saying why.
    const ended: unknown = abort.signal.reason;
    if (ended instanceof RunEnded && outcome.state === TaskState.CANCELLED) {
      outcome.state = TaskState.FAILED;
      outcome.result.error = ended.message;
      outcome.result.errorKind = ErrorKind.INFRASTRUCTURE;
    }
    outcome = await explainDeath(c, slot, outcome);
    // A resumed run that ended without a result line (its CLI died, or never started) still
    // holds the session it was given: kept after it, for the next attempt to resume in turn.
    if (resumed && !outcome.result.sessionId) outcome.result.sessionId = resumed;
    if (taskPlace.prepared) await keepWork(c, taskPlace, spec, outcome, cliEnded, log);
    // Nothing of the run is left to touch the folder (unless its engine was lost: then it is
    // emptied at the next run's start): its transcript is kept for a retry before its end is
    // told, and the rest goes.
    if (!slot.lost) {
      try {
        // No attempt follows a success or a failure no retry can help: nothing of the task's
        // conversation is kept for one (an empty session id keeps none, and forgets the rest).
        const over = outcome.state === TaskState.SUCCEEDED || outcome.permanent;
        const sessionId = over ? "" : outcome.result.sessionId;
        const { agentsDir } = c;
        const store = sessionStore(slot.dir);
        keepSession({
          configDir,
          cwd: place.workspace,
          sessionId,
          taskId,
          store,
          agentsDir,
          resumed,
        });
        await resetConfig(configDir);
      } catch (e) {
        log.warn("the agent's config folder could not be emptied after the run", { error: e });
      }
    }
    return outcome;
  };
  /** The CLI, then the checks; `cliEnded` is how the CLI itself ended. */
  const runInPlace = async (
    place: RunPlace,
    taskPlace: TaskPlace,
  ): Promise<{ outcome: RunOutcome; cliEnded: TaskState; resumed: string | undefined }> => {
    // The Broker's tools only when it answers now; else the run says why it has none.
    const tools =
      slot.broker && c.brokerTools ? await c.brokerTools(slot.broker, agentId) : undefined;
    if (tools && !tools.offered) {
      log.warn("running without the Broker's tools", { reason: tools.notice });
      onOutput(noticeOutput(tools.notice));
    }
    const resume = resumeOf(c, slot, attempt, taskPlace.cwd);
    if (resume)
      log.info("resuming the previous attempt's session", { session_id: resume.sessionId });
    const hostPath = c.caps.image ? "/usr/local/bin:/usr/bin:/bin" : c.hostPath;
    const idle: Record<string, string> =
      slot.lifeline && c.lifelineIdleMs
        ? { [LIFELINE_IDLE_VARIABLE]: String(c.lifelineIdleMs) }
        : {};
    const exec = (req: Parameters<RuntimeBackend["exec"]>[1]) =>
      c.backend.exec(slot.sandbox, { ...req, env: { ...req.env, ...idle } });
    // Nothing is left to do after the CLI when the task has no checks and no work to keep, and
    // its sandbox was made for this run alone (the process runtime's): its result line is the
    // outcome, told at once. An agent's container outlives its runs: one that dies while a run
    // is ended would fail the next task given to its agent meanwhile, before it ran.
    const final = spec.checks.length === 0 && !taskPlace.prepared && !c.caps.image;
    const outcome = await runClaude({
      spec,
      resultSchema: attempt.resultSchema,
      settings: { ...settings, ...(tools?.offered ? tools.settings : {}) },
      place,
      exec,
      hostPath,
      signal: abort.signal,
      onOutput,
      ...(final ? { onResult: tellEarly } : {}),
      flow,
      resume,
    });
    const cliEnded = outcome.state;
    const resumed = resume?.sessionId;
    // Earlier attempts' checks stay in the result, before this one's.
    const earlier = (attempt.previous?.checks ?? []).filter((c) => c.attempt < attempt.attempt);
    outcome.result.checks = earlier;
    if (outcome.state !== TaskState.SUCCEEDED || spec.checks.length === 0)
      return { outcome, cliEnded, resumed };
    if (taskPlace.prepared) {
      // The agent's work is committed before the checks run: what they leave is not its work.
      try {
        await c.place.workspaces.save(taskPlace.prepared, {
          sessionId: outcome.result.sessionId,
          outcome: "before its checks",
        });
      } catch (e) {
        return { outcome: unsaved(outcome, taskPlace.prepared.branch, e, log), cliEnded, resumed };
      }
    }
    const env = claudeEnv(place, { ...settings, apiKey: "", baseUrl: "" }, hostPath);
    const ran = await runChecks({
      checks: spec.checks,
      exec: (req) => exec({ ...req, ...(place.mounts ? { mounts: place.mounts } : {}) }),
      cwd: place.workspace,
      env,
      defaultTimeoutMs: c.checkTimeoutMs,
      marker: `CONDUCTOR_TASK_ID=${taskId}`,
      signal: abort.signal,
      attempt: attempt.attempt,
      onSandboxKilled: () => (outcome.sandboxKilled = true),
    });
    outcome.result.checks = [...earlier, ...ran].slice(-MAX_CHECK_RESULTS);
    const failure = checkFailure(ran);
    if (abort.signal.aborted) {
      outcome.state = TaskState.CANCELLED;
      outcome.result.isError = true;
      outcome.result.error = "cancelled while its checks ran";
      outcome.result.errorKind = ErrorKind.CANCELLED;
    } else if (failure) {
      outcome.state = TaskState.FAILED;
      outcome.result.isError = true;
      outcome.result.error = failure;
      outcome.result.errorKind = ErrorKind.CHECK_FAILED;
    }
    return { outcome, cliEnded, resumed };
  };
  /** The outcome as told: what the model proxy metered added (once: it takes the count). */
  let told: RunOutcome | undefined;
  const tell = (outcome: RunOutcome): RunOutcome => {
    if (told) return told;
    told = outcome;
    const metered = slot.proxy.take();
    meteredInto(outcome, metered, attempt.previous);
    // The CLI's own error: what the model API answered (seen by the proxy, not told by the
    // sandbox) says whether another attempt can get past it.
    if (outcome.result.errorKind === ErrorKind.CLI_ERROR && metered.errorStatus) {
      outcome.result.errorKind = apiErrorKind(metered.errorStatus);
      if (outcome.result.errorKind === ErrorKind.INVALID_REQUEST) outcome.permanent = true;
    }
    log.info("run ended", {
      state: TaskState[outcome.state],
      error: outcome.result.error || undefined,
      proxy_usage: metered,
    });
    return outcome;
  };
  let toldEarly: (outcome: RunOutcome) => void = () => undefined;
  const early = new Promise<RunOutcome>((resolve) => (toldEarly = resolve));
  // At the result line of a run with nothing after its CLI, the outcome goes out now and the
  // agent shows IDLE: a next run given to it starts once this one is ended (RunTask waits,
  // routes.ts), which takes the CLI's own exit, ~60 ms. Meanwhile the proxy refuses what of it
  // still calls the model; a call already under way is metered only as its answer ends, so
  // then the outcome is told after the run, as for every other run.
  function tellEarly(outcome: RunOutcome): void {
    slot.proxy.seal("the run's result is in: no further model call is made while the run is ended");
    if (slot.proxy.inFlight() > 0 || !slot.run) return;
    slot.run.reaping = whole.then(noop, noop);
    free(); // ListAgents shows it IDLE: the Orchestrator may place the next task on it now
    toldEarly(tell(outcome));
  }
  let freed = false;
  const free = () => {
    if (freed) return;
    freed = true;
    slot.agent.tasksCompleted++;
    slot.agent.taskId = "";
    if (slot.agent.state === AgentState.BUSY) slot.agent.state = AgentState.IDLE;
  };
  const done = c.observer ? c.observer.cliRun({ taskId, agentId }, runCli) : runCli();
  slot.run = { taskId, attempt: attempt.attempt, abort, done };
  const whole = (async () => {
    try {
      const outcome = await done;
      // A model call still under way ends with the run, charged to it (the proxy charges a
      // call cut before its answer told its usage at the most it could cost).
      slot.proxy.endRun();
      return tell(outcome);
    } finally {
      // Between runs no model call is made: what a run left behind (in a container that
      // outlives it) cannot spend on the agent's key, unmetered, until the next run, nor
      // finish a call it began during the run (its usage is taken already).
      slot.proxy.endRun();
      slot.lifeline?.cut();
      signal.removeEventListener("abort", onAbort);
      slot.run = undefined;
      free();
    }
  })();
  return Promise.race([whole, early]);
}

function noop(): void {}

/** What this attempt may spend: the task's budget less what its earlier attempts spent. */
function runBudget(spec: TaskSpec, previous: TaskResult | undefined): RunBudget | undefined {
  const b = spec.budget;
  if (!b || (b.maxUsd <= 0 && b.maxInputTokens <= 0n && b.maxOutputTokens <= 0n)) return undefined;
  return {
    maxUsd: b.maxUsd,
    maxInputTokens: Number(b.maxInputTokens),
    maxOutputTokens: Number(b.maxOutputTokens),
    spent: {
      usd: previous?.costUsd ?? 0,
      inputTokens: Number(previous?.usage?.inputTokens ?? 0n),
      outputTokens: Number(previous?.usage?.outputTokens ?? 0n),
    },
  };
}

/**
 * The result records what the model proxy metered (not what the CLI said), added to what the
 * task's earlier attempts spent; a run the budget stopped fails with error_kind BUDGET.
 */
function meteredInto(outcome: RunOutcome, m: MeteredUsage, previous: TaskResult | undefined) {
  const r = outcome.result;
  r.usage ??= create(UsageSchema);
  r.usage.inputTokens = (previous?.usage?.inputTokens ?? 0n) + int64(m.inputTokens);
  r.usage.outputTokens = (previous?.usage?.outputTokens ?? 0n) + int64(m.outputTokens);
  // Metered, as the rest: not what the CLI's result line claims.
  r.usage.cacheCreationInputTokens =
    (previous?.usage?.cacheCreationInputTokens ?? 0n) + int64(m.cacheCreationInputTokens);
  r.usage.cacheReadInputTokens =
    (previous?.usage?.cacheReadInputTokens ?? 0n) + int64(m.cacheReadInputTokens);
  r.costUsd = (previous?.costUsd ?? 0) + m.costUsd;
  if (!m.budgetExhausted || outcome.state === TaskState.CANCELLED) return;
  outcome.state = TaskState.FAILED;
  outcome.permanent = true;
  r.isError = true;
  r.error = `budget exhausted: ${m.budgetExhausted}`;
  r.errorKind = ErrorKind.BUDGET;
}

/**
 * The kind of a model API error by its HTTP status: the request itself refused (4xx but 408
 * request timeout, 409 conflict and 429 rate limit) fails again; the rest may pass.
 */
export function apiErrorKind(status: number): ErrorKind {
  const transient = status === 408 || status === 409 || status === 429 || status >= 500;
  return transient ? ErrorKind.API_ERROR : ErrorKind.INVALID_REQUEST;
}

/** A run whose workspace could not be opened: FAILED, permanent when no retry can help. */
function placeFailed(e: unknown, started: number): RunOutcome {
  const result = create(TaskResultSchema, {
    isError: true,
    error: `the task's workspace could not be opened: ${(e as Error).message}`,
    durationMs: BigInt(Date.now() - started),
  });
  // One that can never be opened (no such repository or ref) is the request's fault.
  const permanent = placeErrorPermanent(e);
  result.errorKind = permanent ? ErrorKind.INVALID_REQUEST : ErrorKind.INFRASTRUCTURE;
  return { state: TaskState.FAILED, result, permanent };
}

/**
 * Resumes the previous attempt's session when a check failed there: its transcript is made
 * available to this agent for this folder (copied from the agent that ran it), and the CLI
 * is told what failed. Undefined when there is nothing to resume.
 */
function resumeOf(c: RunContext, slot: AgentSlot, a: Attempt, cwd: string): Resume | undefined {
  const prev = a.previous;
  const prompt = prev ? fixPrompt(prev.checks) : undefined;
  if (!prev?.sessionId || !prompt) return undefined;
  const configDir = path.join(slot.dir, "claude-config");
  try {
    if (!carrySession(c.agentsDir, a.taskId, prev.sessionId, configDir, cwd, slot.owner))
      return undefined;
  } catch (e) {
    c.log.warn("the previous session could not be carried over; starting a new one", { error: e });
    return undefined;
  }
  return { sessionId: prev.sessionId, prompt };
}

/** Words for how an attempt ended, in its commit's message. */
const ENDED: Partial<Record<TaskState, string>> = {
  [TaskState.SUCCEEDED]: "succeeded",
  [TaskState.FAILED]: "failed",
  [TaskState.CANCELLED]: "cancelled",
  [TaskState.TIMED_OUT]: "timed out",
};

/**
 * Commits what the attempt changed onto the task's branch (pushed, when asked), and removes
 * its worktree; the change goes into the result. Work that cannot be saved fails the attempt
 * (its worktree stays, for the next attempt or the next start to save).
 */
async function keepWork(
  c: RunContext,
  taskPlace: TaskPlace,
  spec: TaskSpec,
  outcome: RunOutcome,
  cliEnded: TaskState,
  log: Logger,
): Promise<void> {
  const prepared = taskPlace.prepared!;
  const repository =
    spec.workspace?.kind.case === "git" ? spec.workspace.kind.value.repository : "";
  try {
    const change = await c.place.workspaces.finish(prepared, {
      sessionId: outcome.result.sessionId,
      outcome: ENDED[outcome.state] ?? "ended",
    });
    outcome.result.change = changeProto(repository, change, cliEnded !== TaskState.SUCCEEDED);
    if (taskPlace.parent) rmEmpty(taskPlace.parent);
  } catch (e) {
    unsaved(outcome, prepared.branch, e, log);
    // What the branch holds is still the task's change: diff and apply can reach it.
    const held = await c.place.workspaces.changeOn(prepared);
    if (held)
      outcome.result.change = changeProto(repository, held, cliEnded !== TaskState.SUCCEEDED);
  }
}

/** The attempt fails (and may be retried) because its work could not be committed or pushed. */
function unsaved(outcome: RunOutcome, branch: string, e: unknown, log: Logger): RunOutcome {
  log.error("the attempt's work could not be saved on its branch", { error: e });
  const why = (e as Error).message;
  const earlier = outcome.result.error;
  const before = earlier && !earlier.includes(why) ? ` (and before that: ${earlier})` : "";
  outcome.state = TaskState.FAILED;
  outcome.permanent = false;
  outcome.result.isError = true;
  outcome.result.errorKind = workNotSavable(e)
    ? ErrorKind.WORK_NOT_SAVED
    : ErrorKind.INFRASTRUCTURE;
  outcome.result.error = earlier?.includes(why)
    ? earlier
    : `the work could not be saved on branch ${branch}: ${why}${before}`;
  return outcome;
}

/**
 * A failed run in a sandbox that died says why the sandbox died (e.g. out of memory); one
 * whose engine could not be reached says so, and that the run was ended all the same.
 */
async function explainDeath(
  c: RunContext,
  slot: AgentSlot,
  outcome: RunOutcome,
): Promise<RunOutcome> {
  if (outcome.state !== TaskState.FAILED || !c.caps.image) return outcome;
  let status: SandboxStatus | undefined;
  // An engine already known lost is not asked again: the call would only wait out its timeout.
  if (!slot.lost) {
    try {
      status = await c.backend.inspect(slot.sandbox);
      if (status.running && !outcome.result.sessionId) {
        // The CLI vanished without a result: the engine may not have noticed its container's end yet.
        status = await c.backend
          .waitForExit(
            slot.sandbox,
            AbortSignal.timeout(outcome.sandboxKilled ? KILLED_NOTICE_MS : DEATH_NOTICE_MS),
          )
          .catch(() => status);
      }
    } catch (e) {
      c.engineFailed(slot, e);
    }
  }
  if (slot.lost) {
    const ended = slot.lifeline ? "; the run was ended through its lifeline" : "";
    outcome.result.error = `the container engine could not be reached during the run${ended}: ${slot.lost}`;
    outcome.result.errorKind = ErrorKind.INFRASTRUCTURE;
    return outcome;
  }
  if (!status || status.running) return outcome;
  c.sandboxDied(slot, status);
  const why = status.oomKilled
    ? "out of memory (the container was OOM-killed)"
    : outcome.sandboxKilled
      ? "Conductor killed it, as no process could start in it to end what the run left there (it was paused, or its pids limit full)"
      : (status.reason ?? "it stopped");
  outcome.result.error = `the agent's container died during the run: ${why}`;
  outcome.result.errorKind = ErrorKind.INFRASTRUCTURE;
  return outcome;
}
