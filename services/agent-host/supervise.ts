import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import {
  isEngineUnreachable,
  type RuntimeBackend,
  type SandboxHandle,
  type SandboxStatus,
} from "../../plugins/runtime.ts";
import type { Logger } from "../shared/log.ts";

/** What the supervisor watches of an agent. */
export interface Watched {
  agent: Agent;
  sandbox: SandboxHandle;
  /** Aborted when the agent is stopped on purpose: no more watching. */
  unwatch: AbortController;
  /** The watch under way (replaced by the next). */
  watching?: AbortController;
  /** Why its engine cannot be reached, while it cannot. */
  lost?: string;
  /** Why it takes no run while its sandbox is paused (frozen by its engine), while it is. */
  paused?: string;
}

/** What the AgentHost does when a sandbox dies, or its engine cannot be reached. */
export interface SupervisorHooks<S extends Watched> {
  /** The sandbox stopped by itself (crash, OOM kill, killed from outside). */
  died(slot: S, status: SandboxStatus): void;
  /** Its engine cannot be reached: a run on it cannot be followed, and is ended. */
  lost(slot: S): void;
  /** The engine answers a probe again after failing one or more. */
  back?(): void;
}

/** Timings, in ms. */
export interface SupervisorTimings {
  /** After a failed engine call, how long until the sandbox is looked at again. */
  recheckMs: number;
  /** How often the engine is probed (fingerprint), so its loss is seen soon. */
  healthIntervalMs: number;
}

/** Probes in a row that must fail before the agents are marked lost: a slow engine is not a lost one. */
const PROBES_TO_LOSE = 3;

/**
 * Watches every agent's sandbox: one that stops by itself is reported dead; an engine that
 * cannot be reached (its call fails, or the periodic probe) marks the agents lost — never an
 * error that ends the service — and when it answers again each lost agent is looked at: back
 * to IDLE if its sandbox still runs, reported dead if not.
 */
export class Supervisor<S extends Watched> {
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private probing = false;
  private failedProbes = 0;
  private readonly backend: RuntimeBackend;
  private readonly log: Logger;
  private readonly hooks: SupervisorHooks<S>;
  private readonly t: SupervisorTimings;
  /**
   * Agents with a look at their sandbox due or under way (recheck): one at a time each, however
   * many failed watches and healthy probes ask for one (an engine that answers pings but not
   * inspects would otherwise pile up a look per probe, each holding a connection).
   */
  private readonly looking = new Set<S>();

  constructor(
    backend: RuntimeBackend,
    log: Logger,
    hooks: SupervisorHooks<S>,
    t: SupervisorTimings,
  ) {
    this.backend = backend;
    this.log = log;
    this.hooks = hooks;
    this.t = t;
  }

  /** Probes the engine every healthIntervalMs; `slots` gives the agents of the moment. */
  start(slots: () => Iterable<S>): void {
    this.timer = setInterval(() => {
      if (this.probing) return;
      this.probing = true;
      this.probe(slots).then(
        () => (this.probing = false),
        (e: unknown) => {
          this.probing = false;
          this.log.warn("probing the container engine failed", { error: e });
        },
      );
    }, this.t.healthIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.closed = true;
    clearInterval(this.timer);
  }

  /** Waits for the sandbox's end (replacing a watch under way). */
  watch(slot: S): void {
    slot.watching?.abort();
    const mine = new AbortController();
    slot.watching = mine;
    const signal = AbortSignal.any([mine.signal, slot.unwatch.signal]);
    const over = () => signal.aborted || this.closed;
    this.backend.waitForExit(slot.sandbox, signal).then(
      (status) => {
        if (!over()) this.hooks.died(slot, status);
      },
      (e: unknown) => {
        if (over()) return;
        this.failed(slot, e);
        this.later(slot);
      },
    );
  }

  /** Marks an agent lost when `e` says its engine cannot be reached; logs any other failure. */
  failed(slot: S, e: unknown): void {
    if (!isEngineUnreachable(e)) {
      this.log.warn("lost the watch on an agent's sandbox; watching again", {
        agent_id: slot.agent.id,
        error: e,
      });
      return;
    }
    if (slot.lost) return;
    slot.lost = e.message;
    slot.agent.state = AgentState.FAILED;
    this.log.warn("agent lost: its container engine cannot be reached", {
      agent_id: slot.agent.id,
      error: e,
    });
    this.hooks.lost(slot);
  }

  /**
   * Looks at the sandbox again: still running (back, if it was lost or paused), stopped,
   * paused, or unreachable (looked at again later). Nothing when a look is due or under way.
   */
  async recheck(slot: S): Promise<void> {
    if (slot.unwatch.signal.aborted || this.closed || this.looking.has(slot)) return;
    this.looking.add(slot);
    let status: SandboxStatus;
    try {
      status = await this.backend.inspect(slot.sandbox);
    } catch (e) {
      this.looking.delete(slot);
      this.failed(slot, e);
      this.later(slot);
      return;
    }
    this.looking.delete(slot);
    if (slot.unwatch.signal.aborted || this.closed) return;
    if (!status.running) {
      slot.watching?.abort();
      this.hooks.died(slot, status);
      return;
    }
    const held = slot.lost !== undefined || slot.paused !== undefined;
    if (slot.lost) {
      this.log.info("agent back: its container engine answers again", { agent_id: slot.agent.id });
      slot.lost = undefined;
    }
    if (status.paused) {
      this.pausedFound(slot);
      return;
    }
    if (slot.paused) {
      this.log.info("agent back: its sandbox is no longer paused", { agent_id: slot.agent.id });
      slot.paused = undefined;
    }
    if (held && slot.agent.state === AgentState.FAILED) slot.agent.state = AgentState.IDLE;
    this.watch(slot);
  }

  /**
   * The agent's sandbox was found paused (frozen by its engine: `docker pause`): listed FAILED,
   * it takes no run (run() refuses one, so the task goes to another agent) until a look, every
   * recheckMs, finds it unpaused, or stopped (then it is replaced). A pause is someone's choice
   * (to inspect it, say): the sandbox is left as it is.
   */
  pausedFound(slot: S): void {
    if (!slot.paused) {
      const id = slot.sandbox.id.slice(0, 12);
      const engine = this.backend.name;
      slot.paused = `its ${engine} container ${id} is paused; it takes tasks again once unpaused (\`${engine} unpause ${id}\`)`;
      slot.agent.state = AgentState.FAILED;
      this.log.warn(
        "agent paused: its sandbox was paused outside Conductor; it takes no task until unpaused",
        {
          agent_id: slot.agent.id,
          sandbox: slot.sandbox.id,
        },
      );
    }
    this.later(slot);
  }

  /** Looks at the sandbox again after recheckMs, unless a look is due or under way. */
  private later(slot: S): void {
    if (this.looking.has(slot)) return;
    this.looking.add(slot);
    const again = () => {
      this.looking.delete(slot);
      this.recheck(slot).catch((e: unknown) =>
        this.log.warn("looking at an agent's sandbox failed", {
          agent_id: slot.agent.id,
          error: e,
        }),
      );
    };
    setTimeout(again, this.t.recheckMs).unref();
  }

  private async probe(slots: () => Iterable<S>): Promise<void> {
    const fp = await this.backend.fingerprint().catch(() => undefined);
    if (this.closed) return;
    if (fp?.healthy && this.failedProbes > 0) this.hooks.back?.();
    this.failedProbes = fp?.healthy ? 0 : this.failedProbes + 1;
    for (const slot of slots()) {
      if (this.failedProbes >= PROBES_TO_LOSE && !slot.lost) {
        const why = fp?.detail ?? "its fingerprint failed";
        this.failed(slot, Object.assign(new Error(why), { name: "EngineUnreachableError" }));
      } else if (fp?.healthy && slot.lost) {
        await this.recheck(slot);
      }
    }
  }
}
