import { Code, ConnectError } from "@connectrpc/connect";
import type { RunOutcome } from "../../gen/conductor/v1/agent_host_pb.js";
import type { Logger } from "../shared/log.ts";
import { runKey, type HostRegistry } from "./hosts.ts";

/** Codes with which an AgentHost refuses a RunTask before running anything. */
const REFUSALS: ReadonlySet<Code> = new Set([
  Code.NotFound,
  Code.FailedPrecondition,
  Code.InvalidArgument,
]);

/**
 * Whether a broken RunTask call proves the attempt never ran, so the task may go to another
 * agent at once: the host refused it before starting (NOT_FOUND, FAILED_PRECONDITION,
 * INVALID_ARGUMENT), or no connection to the host was ever made (nothing was sent). Any other
 * break — UNAVAILABLE mid-call, a reset, a host that died — leaves the attempt unconfirmed.
 */
export function neverRan(err: ConnectError, started: boolean): boolean {
  if (started) return false;
  return REFUSALS.has(err.code) || neverConnected(err.cause);
}

function neverConnected(cause: unknown): boolean {
  for (let c = cause, depth = 0; c instanceof Error && depth < 5; c = c.cause, depth++) {
    const e = c as NodeJS.ErrnoException;
    if (e.syscall === "connect" && (e.code === "ECONNREFUSED" || e.code === "ENOENT")) return true;
  }
  return false;
}

/** What the host of an unconfirmed attempt says, as of the latest poll. */
export type HostView =
  /** The address is not in orchestrator.agent_hosts (any more): treated as unreachable. */
  | { kind: "unconfigured" }
  /** The host did not answer the latest poll. */
  | { kind: "silent" }
  /** A joined node whose lease lapsed: it ended its own runs before that (self-fencing). */
  | { kind: "lost" }
  /** A joined node holding its lease listed the run in a heartbeat since: it reports its end. */
  | { kind: "leased-run" }
  /** A joined node's heartbeat since does not list the run: its report is on its way. */
  | { kind: "leased-idle" }
  /** The host answers, but not yet to a poll begun after the attempt was lost. */
  | { kind: "stale" }
  /** The host answered and one of its agents reports the task. */
  | { kind: "runs-it" }
  /** The host answered and none of its agents reports the task. */
  | { kind: "idle" };

/** What to do about an unconfirmed attempt now. */
export type NextStep =
  | { kind: "wait" }
  /** The host still runs it: ask it to end the run, and keep waiting. */
  | { kind: "cancel-run" }
  | { kind: "over"; reason: string };

/**
 * Decides the next step for an attempt whose host has not confirmed its end: over once the
 * host answers without it, or once the host has been silent for `timeoutMs` (an AgentHost's
 * runs end with it); otherwise wait. A joined node's run goes on without its stream while the
 * node holds its lease: waited for until the node reports its outcome, or for `reportGraceMs`
 * once its heartbeats no longer list it. Pure: the caller passes the view and the clock.
 */
export function nextStep(
  host: string,
  silentSince: number,
  view: HostView,
  now: number,
  timeoutMs: number,
  reportGraceMs = timeoutMs,
): NextStep {
  switch (view.kind) {
    case "idle":
      return {
        kind: "over",
        reason: `agent host ${host} confirmed that no agent runs it any more`,
      };
    case "lost":
      return {
        kind: "over",
        reason: `node ${host} lost: its lease lapsed (orchestrator.node_lease_seconds), and a node ends its own runs before that`,
      };
    case "runs-it":
      return { kind: "cancel-run" };
    case "leased-run":
      return { kind: "wait" };
    case "leased-idle": {
      const waited = now - silentSince;
      if (waited < reportGraceMs) return { kind: "wait" };
      return {
        kind: "over",
        reason: `node ${host} no longer runs it and reported no outcome for ${formatSeconds(waited)}`,
      };
    }
    case "stale":
      return { kind: "wait" };
    case "silent":
    case "unconfigured": {
      const waited = now - silentSince;
      if (waited < timeoutMs) return { kind: "wait" };
      const what =
        view.kind === "silent"
          ? `agent host ${host} did not answer`
          : `agent host ${host} is not in orchestrator.agent_hosts any more; waited`;
      return {
        kind: "over",
        reason: `${what} for ${formatSeconds(waited)} (orchestrator.unconfirmed_attempt_timeout_seconds), so the attempt is taken as over: an agent host's runs end with it`,
      };
    }
  }
}

function formatSeconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

/** How the wait for an unconfirmed attempt ended. */
export type AttemptEnd =
  | { kind: "confirmed"; reason: string }
  /** The node reported how the run ended (NodeService.ReportOutcome). */
  | { kind: "reported"; outcome: RunOutcome }
  /** The task was cancelled meanwhile (it ends CANCELLED; no retry). */
  | { kind: "cancelled" }
  /** The Orchestrator is stopping: recovery decides on restart. */
  | { kind: "closed" };

/** Reports kept for waits not begun yet (see keepEarly); the oldest go first. */
const MAX_EARLY_REPORTS = 1000;

/** Where an unconfirmed attempt ran. */
export interface AttemptPlace {
  taskId: string;
  attempt: number;
  /** The AgentHost's address (HostLink.address). */
  host: string;
  agentId: string;
}

interface Pending extends AttemptPlace {
  /** The host's poll generation when the attempt was lost: only later answers count. */
  generation: number;
  /** A joined node's heartbeats (Joined.beats) when the attempt was lost: only later ones count. */
  beats: number;
  /** Since when the host has said nothing of the attempt. */
  silentSince: number;
  cancelRun: "no" | "sending" | "sent";
  resolve: (end: AttemptEnd) => void;
}

/** Options of UnconfirmedAttempts. */
export interface UnconfirmedAttemptsOptions {
  /** How long a silent host is waited for before its attempts are taken as over. */
  timeoutMs: number;
  /**
   * How long a joined node that no longer lists a run is waited for to report its outcome
   * (the report follows that heartbeat at once; default timeoutMs).
   */
  reportGraceMs?: number | undefined;
  /** Deadline of CancelRun calls. */
  rpcTimeoutMs: number;
  log: Logger;
}

/**
 * Attempts whose AgentHost was lost mid-run: each is waited for until its host confirms it
 * has ended (a poll answered with no agent running it), or until the host has been silent for
 * the timeout. A retry starts only after that, so an attempt never runs twice.
 */
export class UnconfirmedAttempts {
  private readonly pending = new Map<string, Pending>();
  private readonly early = new Map<
    string,
    { host: string; attempt: number; outcome: RunOutcome }
  >();
  private readonly calls = new Set<Promise<void>>();
  private readonly hosts: HostRegistry;
  private readonly opts: UnconfirmedAttemptsOptions;

  constructor(hosts: HostRegistry, opts: UnconfirmedAttemptsOptions) {
    this.hosts = hosts;
    this.opts = opts;
  }

  /** Starts waiting for an attempt's end; resolves once it is known (see AttemptEnd). */
  wait(place: AttemptPlace, now: number): Promise<AttemptEnd> {
    const early = this.early.get(place.taskId);
    if (early && early.host === place.host && early.attempt === place.attempt) {
      this.early.delete(place.taskId);
      return Promise.resolve({ kind: "reported", outcome: early.outcome });
    }
    return new Promise((resolve) => {
      this.pending.get(place.taskId)?.resolve({ kind: "closed" });
      this.pending.set(place.taskId, {
        ...place,
        generation: this.hosts.generation,
        beats: this.hosts.link(place.host)?.joined?.beats ?? 0,
        silentSince: now,
        cancelRun: "no",
        resolve,
      });
    });
  }

  /** Whether the task has an attempt waiting for confirmation. */
  has(taskId: string): boolean {
    return this.pending.has(taskId);
  }

  /** Decides every waiting attempt from the latest poll of the hosts; call after each poll. */
  check(now: number): void {
    for (const p of [...this.pending.values()]) {
      const view = this.view(p);
      if (["runs-it", "stale", "leased-run"].includes(view.kind)) p.silentSince = now;
      const o = this.opts;
      const step = nextStep(p.host, p.silentSince, view, now, o.timeoutMs, o.reportGraceMs);
      if (step.kind === "over") this.end(p, { kind: "confirmed", reason: step.reason });
      else if (step.kind === "cancel-run" && p.cancelRun === "no") this.sendCancelRun(p);
    }
  }

  /**
   * A node's report of how an attempt it ran ended: ends that attempt's wait. False when no
   * wait is for that attempt on that host.
   */
  report(host: string, taskId: string, attempt: number, outcome: RunOutcome): boolean {
    const p = this.pending.get(taskId);
    if (!p || p.host !== host || p.attempt !== attempt) return false;
    this.end(p, { kind: "reported", outcome });
    return true;
  }

  /**
   * Keeps a node's report of an attempt whose wait has not begun (its stream is broken, but
   * not yet seen so): the wait, when it begins, ends with it.
   */
  keepEarly(host: string, taskId: string, attempt: number, outcome: RunOutcome): void {
    this.early.delete(taskId);
    this.early.set(taskId, { host, attempt, outcome });
    for (const key of this.early.keys()) {
      if (this.early.size <= MAX_EARLY_REPORTS) break;
      this.early.delete(key);
    }
  }

  /** Ends the wait of a cancelled task at once, asking its host (best effort) to end the run. */
  cancel(taskId: string): boolean {
    const p = this.pending.get(taskId);
    if (!p) return false;
    if (p.cancelRun === "no") this.sendCancelRun(p);
    this.end(p, { kind: "cancelled" });
    return true;
  }

  /** Ends every wait (the Orchestrator stops) and waits for CancelRun calls under way. */
  async close(): Promise<void> {
    for (const p of [...this.pending.values()]) this.end(p, { kind: "closed" });
    await Promise.all([...this.calls]);
  }

  private end(p: Pending, end: AttemptEnd): void {
    if (this.pending.get(p.taskId) === p) this.pending.delete(p.taskId);
    p.resolve(end);
  }

  private view(p: Pending): HostView {
    const link = this.hosts.link(p.host);
    if (!link) return { kind: "unconfigured" };
    if (link.lost) return { kind: "lost" };
    // A joined node's heartbeats say what runs there, tunnel or not; until one comes after the
    // loss, its lease decides.
    if (link.joined) {
      if (link.joined.beats <= p.beats) return { kind: "stale" };
      const listed = link.joined.runs.has(runKey(p.taskId, p.attempt));
      return listed ? { kind: "leased-run" } : { kind: "leased-idle" };
    }
    if (!link.reachable) return { kind: "silent" };
    if (link.answeredIn <= p.generation) return { kind: "stale" };
    return link.agents.some((a) => a.taskId === p.taskId) ? { kind: "runs-it" } : { kind: "idle" };
  }

  /** CancelRun to the attempt's host; a call that does not get through is sent again later. */
  private sendCancelRun(p: Pending): void {
    const link = this.hosts.link(p.host);
    if (!link) return;
    const log = this.opts.log.child({ task_id: p.taskId, attempt: p.attempt, host: p.host });
    p.cancelRun = "sending";
    const call = link.client
      .cancelRun({ taskId: p.taskId }, { timeoutMs: this.opts.rpcTimeoutMs })
      .then(
        () => {
          p.cancelRun = "sent";
          log.info("asked the agent host to end the unconfirmed attempt");
        },
        (e: unknown) => {
          const err = ConnectError.from(e);
          // NOT_FOUND: the host no longer runs it; the next poll confirms.
          p.cancelRun = err.code === Code.NotFound ? "sent" : "no";
          if (err.code !== Code.NotFound)
            log.warn("could not ask the agent host to end the unconfirmed attempt", {
              code: Code[err.code],
              error: err.rawMessage,
            });
        },
      )
      .finally(() => this.calls.delete(call));
    this.calls.add(call);
  }
}
