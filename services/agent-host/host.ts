import { randomUUID } from "node:crypto";
import { mkdirSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { AgentSchema, AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import type { AgentOutput, Workspace } from "../../gen/conductor/v1/task_pb.js";
import {
  isEngineUnreachable,
  LABEL_AGENT,
  LABEL_HOST,
  LABEL_NODE,
  type Capabilities,
  type Fingerprint,
  type RuntimeBackend,
  type SandboxHandle,
  type SandboxStatus,
} from "../../plugins/runtime.ts";
import { Unreachable } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { brokerTools, type BrokerToolsCheck } from "./broker-tools.ts";
import type { BrokerAccess } from "../broker/access.ts";
import { AgentBusyError, FencedError, UnknownAgentError } from "./errors.ts";
import {
  agentPaths,
  hostKeyOf,
  lifelined,
  provision,
  worktreesDir,
  release,
  sandboxSpec,
  type AgentParts,
  type ProvisionContext,
  type SandboxSettings,
} from "./provision.ts";
import type { OutputFlow, RunOutcome, RunSettings } from "./run.ts";
import { executeRun, RunEnded, type AgentSlot, type Attempt } from "./runs.ts";
import { checkWorkspace, sweepEmpty, taskDirOf, type PlaceContext } from "./task-place.ts";
import { Workspaces, type CommitBounds } from "./workspace/index.ts";
import { settle, takeUpLeftovers } from "./readopt.ts";
import { Supervisor } from "./supervise.ts";
import type { AgentHostObserver } from "./telemetry.ts";
import { AgentUids } from "./uids.ts";

export { AgentBusyError, UnknownAgentError } from "./errors.ts";
export type { SandboxSettings } from "./provision.ts";

/** What a node offers tasks, and its labels (agent_host.*). */
export interface NodeOffer {
  version: string;
  labels: Record<string, string>;
  cpus: number;
  memoryBytes: bigint;
}

/** What an AgentHost is configured with. */
export interface AgentHostOptions {
  nodeId: string;
  numAgents: number;
  /** Put before every agent's id ("node-a:" makes agent-1 node-a:agent-1): a joined node's name. */
  agentIdPrefix?: string;
  /** What the node offers tasks and is labelled (GetCapacity, RegisterNode). */
  offer?: NodeOffer;
  dataDir: string;
  workspacePolicy: "keep" | "clean";
  backend: RuntimeBackend;
  /** The backend's fingerprint, when the caller has read it already (else start() reads it). */
  fingerprint?: Fingerprint | undefined;
  sandbox: SandboxSettings;
  settings: RunSettings;
  hostPath: string;
  log: Logger;
  /** Told of every CLI run (traces); optional. */
  observer?: AgentHostObserver | undefined;
  /** The Broker agents talk to (each gets its own credential and the MCP tools); optional. */
  /** How agents reach the Broker; unset: no Broker tools. */
  broker?: BrokerAccess | undefined;
  /** How often the engine is probed, so agents are reported lost at once (default 5 s). */
  healthIntervalMs?: number;
  /** Task workspaces: git commits' author, host folders allowed, checks' default timeout. */
  workspaces: {
    author: { name: string; email: string };
    allowedHostPaths: string[];
    checkTimeoutMs: number;
    /** Bound of each git command, in ms (default 10 minutes). */
    gitTimeoutMs?: number;
    /** What an attempt's commit may take from its worktree (default DEFAULT_COMMIT_BOUNDS). */
    commitBounds?: CommitBounds;
    /** Conductor's folders besides the data folder (the sockets'): no workspace may touch one. */
    protectedPaths: string[];
  };
}

/** After a failed engine call, how long until an agent's sandbox is looked at again. */
const RECHECK_MS = 1000;
const HEALTH_INTERVAL_MS = 5000;
/** After a failed try at replacing an agent, the wait before the next: doubling, 1 s to 30 s. */
const REPLACE_RETRY_FIRST_MS = 1000;
const REPLACE_RETRY_MAX_MS = 30_000;
/**
 * How long a clean stop may spend on the engine beyond the sandboxes' stop grace: what it could
 * not remove by then (its engine gone, or hung) is left, for the next start on the same data
 * folder to re-adopt or remove (an idle container ends by itself meanwhile).
 */
const CLOSE_ENGINE_MS = 15_000;
/** Between tries at removing what is left, on a clean stop (an engine restarting meanwhile). */
const CLOSE_RETRY_MS = 500;
/**
 * One node's agent pool: each agent is a long-lived sandbox from the runtime backend (a
 * container, warm between tasks, or a folder for the process backend) with its own
 * workspace and CLI config folder; it runs one task at a time. After a restart it re-adopts
 * the sandboxes an earlier run of it left that are still healthy and made as it would make them.
 */
export class AgentHost {
  private readonly slots = new Map<string, AgentSlot>();
  private readonly uids: AgentUids;
  private nextIndex = 1;
  private closed = false;
  /** Aborted by close(): ends the waits between tries at replacing an agent. */
  private readonly closing = new AbortController();
  /** Aborted (and made anew) when the engine answers again: replacements try again at once. */
  private engineBack = new AbortController();
  /** Why this node takes no task now (its lease may have lapsed); undefined: it does. */
  private fenced: string | undefined;
  /** Replacements of agents whose sandbox died, still under way. */
  private readonly replacing = new Set<Promise<void>>();
  readonly opts: AgentHostOptions;
  /** Names this AgentHost (by its data folder) on everything it creates. */
  readonly hostKey: string;
  private caps: Capabilities | undefined;
  private readonly supervisor: Supervisor<AgentSlot>;

  /** Whether a run gets the Broker's tools (when a Broker is configured). */
  private readonly brokerTools: BrokerToolsCheck | undefined;
  /** This node's git worktrees of tasks, on cached clones of their repositories. */
  readonly workspaces: Workspaces;

  constructor(opts: AgentHostOptions) {
    this.opts = opts;
    this.brokerTools = opts.broker ? brokerTools(opts.broker) : undefined;
    this.hostKey = hostKeyOf(opts.dataDir);
    this.workspaces = new Workspaces({
      dataDir: opts.dataDir,
      author: opts.workspaces.author,
      ...(opts.workspaces.gitTimeoutMs ? { gitTimeoutMs: opts.workspaces.gitTimeoutMs } : {}),
      ...(opts.workspaces.commitBounds ? { commitBounds: opts.workspaces.commitBounds } : {}),
      log: opts.log.child({ component: "workspaces" }),
    });
    this.uids = new AgentUids(opts.sandbox.user);
    this.supervisor = new Supervisor<AgentSlot>(
      opts.backend,
      opts.log,
      {
        died: (slot, status) => this.replaceLater(slot, status),
        // A run on an engine that does not answer cannot be followed: it is ended (its
        // lifeline is cut as it ends), and fails saying why (runs.ts).
        lost: (slot) => slot.run?.abort.abort(),
        back: () => {
          this.engineBack.abort();
          this.engineBack = new AbortController();
        },
      },
      { recheckMs: RECHECK_MS, healthIntervalMs: opts.healthIntervalMs ?? HEALTH_INTERVAL_MS },
    );
  }

  private get ctx(): ProvisionContext {
    const o = this.opts;
    if (!this.caps) throw new Error("the agent host is not started");
    return {
      nodeId: o.nodeId,
      dataDir: o.dataDir,
      hostKey: this.hostKey,
      backend: o.backend,
      caps: this.caps,
      sandbox: o.sandbox,
      model: {
        baseUrl: o.settings.baseUrl,
        apiKey: o.settings.apiKey,
        prices: o.settings.prices,
      },
      broker: o.broker,
      log: o.log,
    };
  }

  /**
   * Takes up what an earlier run of this host left — re-adopting each configured agent's
   * sandbox that still runs, was made from the same spec and answers an exec; reaping the
   * rest — then starts the agents that are missing.
   */
  async start(): Promise<void> {
    const o = this.opts;
    const fp = o.fingerprint ?? (await o.backend.fingerprint());
    if (!fp.healthy) throw new Error(`runtime ${fp.runtime} is not usable: ${fp.detail}`);
    this.caps = fp.capabilities;
    const wanted = Array.from({ length: o.numAgents }, (_, i) => this.agentId(i + 1));
    for (const id of wanted) this.uids.userOf(id); // uids in start order, as before the restart
    this.nextIndex = o.numAgents + 1;
    const kept = await takeUpLeftovers({
      backend: o.backend,
      log: o.log,
      nodeId: o.nodeId,
      hostKey: this.hostKey,
      recover: this.caps.recover,
      wanted: new Set(wanted),
      specOf: (id) =>
        sandboxSpec(
          this.ctx,
          id,
          this.uids.userOf(id),
          this.caps !== undefined && lifelined(this.caps, this.uids.ownerOf(id)),
        ),
    });
    const agentsDir = path.join(o.dataDir, "agents");
    mkdirSync(agentsDir, { recursive: true, mode: 0o700 });
    for (const id of readdirSync(agentsDir))
      if (!kept.has(id)) rmSync(path.join(agentsDir, id, "run"), { recursive: true, force: true });
    for (const id of wanted) await this.startAgent(id, kept.get(id));
    // Work a killed AgentHost left in worktrees goes onto its tasks' branches, once nothing of
    // its agents runs any more (re-adopted sandboxes were settled) and before any task runs.
    for (const r of await this.workspaces.recover()) {
      if (r.error)
        o.log.error("could not save a task's work left by the last run", {
          task_id: r.taskId,
          error: r.error,
        });
      else
        o.log.info("saved a task's work left by the last run", {
          task_id: r.taskId,
          head: r.change?.headCommit,
        });
    }
    sweepEmpty(worktreesDir(o.dataDir));
    for (const id of readdirSync(agentsDir)) sweepEmpty(taskDirOf(path.join(agentsDir, id)));

    this.supervisor.start(() => this.slots.values());
  }

  /** How runs open their workspaces on this node. */
  private get place(): PlaceContext {
    return {
      dataDir: this.opts.dataDir,
      protectedPaths: [this.opts.dataDir, ...this.opts.workspaces.protectedPaths],
      workspaces: this.workspaces,
      allowedHostPaths: this.opts.workspaces.allowedHostPaths,
      execMounts: Boolean(this.caps?.execMounts),
      log: this.opts.log,
    };
  }

  /** Whether a workspace can be used on this node (CheckWorkspace); a git one's commit. */
  checkWorkspace(ws: Workspace | undefined, signal?: AbortSignal): Promise<string> {
    return checkWorkspace(this.place, ws, signal);
  }

  /**
   * Adds one agent: its folders, its model proxy and its sandbox, started (or `adopted`: one
   * found after a restart, first made to end whatever of the agent's user still runs in it).
   */
  async startAgent(
    id = this.agentId(this.nextIndex++),
    adopted?: SandboxHandle,
    replacing?: AgentSlot,
  ): Promise<Agent> {
    const user = this.uids.userOf(id);
    const owner = this.uids.ownerOf(id);
    let parts: AgentParts | undefined;
    try {
      parts = await provision(this.ctx, id, user, owner, adopted);
      if (adopted) await settle(this.opts.backend, parts);
    } catch (e) {
      if (adopted) {
        if (parts) await release(this.opts.backend, parts, false);
        // Not healthy after all: reaped, and made anew.
        this.opts.log.warn("a re-adopted sandbox failed; replacing it", { agent_id: id, error: e });
        await this.opts.backend.destroy(adopted).catch(() => undefined);
        return this.startAgent(id);
      }
      if (isEngineUnreachable(e)) throw new Unreachable(`the ${this.opts.backend.name} engine`, e);
      throw e;
    }
    const agent = create(AgentSchema, {
      id,
      nodeId: this.opts.nodeId,
      state: AgentState.IDLE,
      workspace: agentPaths(this.opts.dataDir, id).workspace,
      runtime: this.opts.backend.name,
    });
    if (replacing && (this.closed || this.slots.get(id) !== replacing)) {
      // Stopped (or the host closed) while its replacement was being made: none is wanted.
      await release(this.opts.backend, parts, true);
      throw new Error(`agent ${id} was stopped while it was being replaced`);
    }
    const slot: AgentSlot = {
      ...parts,
      agent,
      dir: agentPaths(this.opts.dataDir, id).dir,
      owner,
      unwatch: new AbortController(),
    };
    this.slots.set(id, slot);
    this.supervisor.watch(slot);
    return agent;
  }

  /** Stops an agent, ending its running task first, and removes its sandbox. */
  async stopAgent(id: string): Promise<void> {
    const slot = this.slot(id);
    slot.agent.state = AgentState.STOPPING;
    slot.unwatch.abort();
    if (slot.run) {
      slot.run.abort.abort();
      await slot.run.done;
    }
    this.slots.delete(id);
    await this.opts.backend
      .stop(slot.sandbox, this.opts.sandbox.stopGraceMs)
      .catch(() => undefined);
    try {
      await release(this.opts.backend, slot, true);
    } catch (e) {
      if (isEngineUnreachable(e)) throw new Unreachable(`the ${this.opts.backend.name} engine`, e);
      throw e;
    }
  }

  /** All agents, in start order. */
  agents(): Agent[] {
    return [...this.slots.values()].map((s) => s.agent);
  }

  /**
   * Resolves once the agent's last run is ended, when its outcome went out at its result line
   * and it is being ended still (the agent shows IDLE meanwhile); at once otherwise.
   */
  ended(agentId: string): Promise<void> {
    return this.slots.get(agentId)?.run?.reaping ?? Promise.resolve();
  }

  /**
   * Resolves once agent `agentId` may be given a run: its last run is ended (ended()), and on a
   * runtime of containers its container still runs. One found dead (killed while idle, its
   * engine's report of that not in yet: Podman's comes up to a quarter second late) is
   * replaced, and one found paused is held (Supervisor.pausedFound); run() then refuses the run
   * (FAILED_PRECONDITION: requeued, not an attempt).
   */
  async ready(agentId: string): Promise<void> {
    await this.ended(agentId);
    const slot = this.slots.get(agentId);
    // run() refuses every other case itself.
    if (!slot || !this.caps?.image || slot.run || slot.lost) return;
    if (slot.agent.state !== AgentState.IDLE) return;
    let status: SandboxStatus;
    try {
      status = await this.opts.backend.inspect(slot.sandbox);
    } catch (e) {
      // Unreachable: lost, and the run refused; else the run finds out for itself.
      if (isEngineUnreachable(e)) this.supervisor.failed(slot, e);
      return;
    }
    if (!status.running && !slot.run) this.replaceLater(slot, status);
    else if (status.paused) this.supervisor.pausedFound(slot);
  }

  /**
   * Runs a task on an agent; outputs go to onOutput as they come. Throws at once (before
   * anything runs) when the agent is unknown or not idle (a run whose outcome was told at its
   * result line holds it until it is ended: see ended()).
   */
  run(
    agentId: string,
    attempt: Attempt,
    signal: AbortSignal,
    onOutput: (o: AgentOutput) => void,
    flow?: OutputFlow,
  ): Promise<RunOutcome> {
    const slot = this.slot(agentId);
    if (this.fenced) {
      throw new FencedError(
        `node ${this.opts.nodeId} takes no task now: ${this.fenced} (it takes work again once it holds its lease)`,
      );
    }
    if (slot.lost) {
      // A refusal (nothing ran): the task goes to another agent, or waits for this one's return.
      throw new AgentBusyError(
        `agent ${agentId} is lost: its ${this.opts.backend.name} engine cannot be reached (${slot.lost})`,
      );
    }
    if (slot.paused) throw new AgentBusyError(`agent ${agentId} takes no task: ${slot.paused}`);
    if (slot.run || slot.agent.state !== AgentState.IDLE) {
      throw new AgentBusyError(
        `agent ${agentId} is not idle (${AgentState[slot.agent.state]}${slot.agent.taskId ? `, task ${slot.agent.taskId}` : ""})`,
      );
    }
    slot.agent.state = AgentState.BUSY;
    slot.agent.taskId = attempt.taskId;
    const caps = this.caps!;
    const o = this.opts;
    return executeRun(
      {
        backend: o.backend,
        caps,
        settings: o.settings,
        hostPath: o.hostPath,
        workspacePolicy: o.workspacePolicy,
        log: o.log,
        observer: o.observer,
        brokerTools: this.brokerTools,
        engineFailed: (s, e) => this.supervisor.failed(s, e),
        sandboxDied: (s, status) => this.replaceLater(s, status),
        place: this.place,
        agentsDir: path.join(o.dataDir, "agents"),
        checkTimeoutMs: o.workspaces.checkTimeoutMs,
        lifelineIdleMs: this.lifelineIdleMs,
      },
      slot,
      attempt,
      signal,
      onOutput,
      flow,
    );
  }

  /** Names this run of the AgentHost (a joined node's registration and tunnel carry it). */
  readonly instanceId = randomUUID();

  /** The id of the agent started n-th. */
  private agentId(n: number): string {
    return `${this.opts.agentIdPrefix ?? ""}agent-${n}`;
  }

  /**
   * Set by a joined node (join.ts): its runs end by themselves once their lifelines get no
   * tick for this long (ms), so a frozen AgentHost's runs end before its lease lapses.
   */
  lifelineIdleMs: number | undefined;

  /** Tells every run this AgentHost still holds it (see lifelineIdleMs). */
  tickLifelines(): void {
    for (const s of this.slots.values()) s.lifeline?.tick();
  }

  /** Every run under way: its task and attempt (a joined node's heartbeat reports them). */
  runs(): { taskId: string; attempt: number }[] {
    return [...this.slots.values()].flatMap((s) =>
      s.run ? [{ taskId: s.run.taskId, attempt: s.run.attempt }] : [],
    );
  }

  /**
   * Self-fencing (a joined node whose lease may have lapsed): ends every run, and refuses new
   * ones with `reason` until unfenced (`undefined`). Resolves once every CLI is gone.
   */
  async fence(reason: string | undefined): Promise<void> {
    this.fenced = reason;
    if (reason === undefined) return;
    const why = new RunEnded(`node ${this.opts.nodeId} fenced itself: ${reason}`);
    await Promise.all(this.runs().map((r) => this.cancel(r.taskId, why)));
  }

  /**
   * Ends the run of a task, if this host has it; resolves when its CLI is gone. With `why` the
   * run fails saying so (it was not cancelled by its caller).
   */
  async cancel(taskId: string, why?: RunEnded): Promise<boolean> {
    for (const slot of this.slots.values()) {
      if (slot.run?.taskId === taskId) {
        slot.run.abort.abort(why);
        await slot.run.done;
        return true;
      }
    }
    return false;
  }

  /**
   * Ends every run and removes every sandbox; for shutdown. Bounded: after the sandboxes' stop
   * grace and CLOSE_ENGINE_MS more, the backend is closed (its calls under way end) and what
   * could not be removed is left, logged; a removal that fails before then is tried again.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.closing.abort();
    this.supervisor.stop();
    const deadline = AbortSignal.timeout(this.opts.sandbox.stopGraceMs + CLOSE_ENGINE_MS);
    const onDeadline = () => void this.opts.backend.close().catch(() => undefined);
    deadline.addEventListener("abort", onDeadline, { once: true });
    try {
      // A replacement under way finishes first, so its new sandbox is stopped below too.
      await Promise.all([...this.replacing]);
      await Promise.all(
        [...this.slots.keys()].map((id) =>
          this.stopAgent(id).catch((e: unknown) =>
            this.opts.log.warn("could not remove an agent's sandbox; trying again", {
              agent_id: id,
              error: e,
            }),
          ),
        ),
      );
      // What could not be removed yet, and what a failed replacement left half made.
      for (;;) {
        try {
          await this.reap();
          break;
        } catch (e) {
          if (deadline.aborted) {
            this.opts.log.error(
              "left agent sandboxes behind: the engine did not remove them in time (the next start on this data folder re-adopts or removes them)",
              { error: e },
            );
            break;
          }
          await sleep(CLOSE_RETRY_MS, undefined, { signal: deadline }).catch(() => undefined);
        }
      }
    } finally {
      deadline.removeEventListener("abort", onDeadline);
      await this.opts.backend.close();
    }
  }

  /** Removes this AgentHost's sandboxes (of agent `id`, or of all) that no agent holds. */
  private async reap(id?: string): Promise<void> {
    const labels = { [LABEL_NODE]: this.opts.nodeId, [LABEL_HOST]: this.hostKey };
    const found = await this.opts.backend.list(id ? { ...labels, [LABEL_AGENT]: id } : labels);
    // A dead agent's sandbox (its unwatch aborted) is no longer held: it goes too.
    const held = new Set(
      [...this.slots.values()].flatMap((s) => (s.unwatch.signal.aborted ? [] : [s.sandbox.id])),
    );
    for (const h of found) {
      if (held.has(h.id)) continue;
      this.opts.log.warn("removing an agent sandbox no agent holds", {
        agent_id: h.agentId,
        sandbox: h.id,
      });
      await this.opts.backend.destroy(h);
    }
  }

  /**
   * Replaces an agent whose sandbox died by itself (crash, OOM kill, docker kill), once: the
   * supervisor's watch and a run that found it dead may both tell.
   */
  private replaceLater(slot: AgentSlot, status: SandboxStatus): void {
    const id = slot.agent.id;
    if (this.closed || this.slots.get(id) !== slot || slot.unwatch.signal.aborted) return;
    const replaced: Promise<void> = this.replace(slot, status)
      .catch((e: unknown) => {
        this.opts.log.error("could not replace the agent", { agent_id: slot.agent.id, error: e });
      })
      .then(() => void this.replacing.delete(replaced));
    this.replacing.add(replaced);
  }

  private async replace(slot: AgentSlot, status: SandboxStatus): Promise<void> {
    const why = status.oomKilled ? "out of memory" : (status.reason ?? "stopped");
    this.opts.log.warn("agent sandbox died; replacing the agent", {
      agent_id: slot.agent.id,
      reason: why,
    });
    slot.agent.state = AgentState.FAILED;
    slot.unwatch.abort();
    await slot.run?.done;
    await release(this.opts.backend, slot, true).catch(() => undefined);
    // The agent stays listed, FAILED, until its new sandbox runs; a try that fails (the engine
    // restarting, a name taken) is made again until one holds, or the agent is stopped.
    const id = slot.agent.id;
    for (let wait = REPLACE_RETRY_FIRST_MS; ; wait = Math.min(2 * wait, REPLACE_RETRY_MAX_MS)) {
      if (this.closed || this.slots.get(id) !== slot) return;
      try {
        await this.reap(id); // what an earlier try left half made
        await this.startAgent(id, undefined, slot);
        return;
      } catch (e) {
        if (this.closed || this.slots.get(id) !== slot) return;
        this.opts.log.error("could not replace the agent; trying again", {
          agent_id: id,
          retry_in_ms: wait,
          error: e,
        });
      }
      const woken = AbortSignal.any([this.closing.signal, this.engineBack.signal]);
      await sleep(wait, undefined, { signal: woken }).catch(() => undefined);
    }
  }

  private slot(id: string): AgentSlot {
    const slot = this.slots.get(id);
    if (!slot) throw new UnknownAgentError(`agent "${id}" not found on node ${this.opts.nodeId}`);
    return slot;
  }
}
