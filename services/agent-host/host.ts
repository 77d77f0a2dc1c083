import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { AgentSchema, AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import { TaskState, type AgentOutput, type TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import {
  LABEL_AGENT,
  LABEL_HOST,
  LABEL_NODE,
  SANDBOX_INFRA_USER,
  type RuntimeBackend,
  type SandboxHandle,
  type SandboxStatus,
} from "../../plugins/runtime.ts";
import { freshRunDir, ownTree, type AgentOwner } from "../shared/agent-files.ts";
import type { Logger } from "../shared/log.ts";
import type { AgentHostObserver } from "./telemetry.ts";
import { setUpAgentBroker, type AgentBroker } from "../broker/access.ts";
import { brokerTools, noticeOutput, type BrokerToolsCheck } from "./broker-tools.ts";
import { startLifeline, type Lifeline } from "./lifeline.ts";
import { startModelProxy, type ModelProxy } from "./model-proxy.ts";
import { runClaude, type RunOutcome, type RunSettings } from "./run.ts";

/** A domain error the routes translate: the agent does not exist. */
export class UnknownAgentError extends Error {
  override name = "UnknownAgentError";
}

/** A domain error the routes translate: the agent is already running a task. */
export class AgentBusyError extends Error {
  override name = "AgentBusyError";
}

interface AgentSlot {
  agent: Agent;
  dir: string;
  sandbox: SandboxHandle;
  proxy: ModelProxy;
  /** Containers only: ends the container when this AgentHost ends. */
  lifeline?: Lifeline;
  /** The agent's way to the Broker (relay socket, credential, MCP server), when one is configured. */
  broker?: AgentBroker;
  /** Ends the watch on the sandbox's death. */
  unwatch: AbortController;
  run?: { taskId: string; abort: AbortController; done: Promise<RunOutcome> };
}

/** Container settings for agents (ignored by the process backend). */
export interface SandboxSettings {
  image: string;
  network: string;
  user: string;
  memoryBytes: number;
  cpus: number;
  pids: number;
  ulimits: Record<string, number>;
  stopGraceMs: number;
}

/** What an AgentHost is configured with. */
export interface AgentHostOptions {
  nodeId: string;
  numAgents: number;
  dataDir: string;
  workspacePolicy: "keep" | "clean";
  backend: RuntimeBackend;
  sandbox: SandboxSettings;
  settings: RunSettings;
  hostPath: string;
  log: Logger;
  /** Told of every CLI run (traces); optional. */
  observer?: AgentHostObserver | undefined;
  /** The Broker agents talk to (each gets its own credential and the MCP tools); optional. */
  broker?: { secret: Buffer; socketPath: string } | undefined;
}

/** Agents one AgentHost gives a uid of their own, from runtime.user up (orchestrator.num_agents' bound). */
const MAX_AGENT_UIDS = 1000;
/** How long after a failed engine call the watch on a sandbox is taken up again. */
const REWATCH_MS = 1000;
/** Inside a container the CLI reaches the model proxy through this loopback forwarder. */
const FORWARDER_PORT = 8080;
/** How long a failed run waits for the engine to report its container's death. */
const DEATH_NOTICE_MS = 2000;
/** The CLI insists on some key; the real one is added by the proxy, outside the container. */
const PLACEHOLDER_KEY = "sk-conductor-proxy-adds-the-real-key";

/**
 * One node's agent pool: each agent is a long-lived sandbox from the runtime backend (a
 * container, warm between tasks, or a folder for the process backend) with its own
 * workspace and CLI config folder; it runs one task at a time.
 */
export class AgentHost {
  private readonly slots = new Map<string, AgentSlot>();
  /** Each agent's offset from runtime.user, by agent id (see userOf). */
  private readonly uidOffsets = new Map<string, number>();
  private nextIndex = 1;
  private closed = false;
  /** Replacements of agents whose sandbox died, still under way. */
  private readonly replacing = new Set<Promise<void>>();
  readonly opts: AgentHostOptions;
  /** Names this AgentHost (by its data folder) on everything it creates. */
  private readonly hostKey: string;
  /** Whether a run gets the Broker's tools (when a Broker is configured). */
  private readonly brokerTools: BrokerToolsCheck | undefined;

  constructor(opts: AgentHostOptions) {
    this.opts = opts;
    this.brokerTools = opts.broker ? brokerTools(opts.broker) : undefined;
    this.hostKey = createHash("sha256")
      .update(path.resolve(opts.dataDir))
      .digest("hex")
      .slice(0, 16);
  }

  private get contained(): boolean {
    return this.opts.backend.name !== "process";
  }

  /**
   * The uid:gid agent `id` runs as: runtime.user's, plus the agent's place in start order, so
   * each agent is a user of its own (kernel-level separation from the others, and from any
   * account on the host when runtime.user's range is unused). A replaced agent keeps its uid.
   */
  private userOf(id: string): AgentOwner {
    let offset = this.uidOffsets.get(id);
    if (offset === undefined) {
      offset = this.uidOffsets.size;
      if (offset >= MAX_AGENT_UIDS) {
        throw new Error(
          `no uid left for agent ${id}: one AgentHost runs at most ${MAX_AGENT_UIDS} agents, from runtime.user ${this.opts.sandbox.user}`,
        );
      }
      this.uidOffsets.set(id, offset);
    }
    const [uid, gid] = this.opts.sandbox.user.split(":").map(Number);
    return { uid: uid! + offset, gid: (gid ?? uid!) + offset };
  }

  /**
   * Who owns what the agent may write, when it is not us: a root AgentHost runs agents as
   * userOf(id) (containers and the process sandbox alike); a non-root one as itself.
   */
  private ownerOf(id: string): AgentOwner | undefined {
    return (process.getuid?.() ?? 0) === 0 ? this.userOf(id) : undefined;
  }

  /** Reaps what an earlier run of this host left, then starts the configured agents. */
  async start(): Promise<void> {
    const fp = await this.opts.backend.fingerprint();
    if (!fp.healthy) throw new Error(`runtime ${fp.runtime} is not usable: ${fp.detail}`);
    // Only this host's leftovers: another AgentHost on the machine (its own data folder) may
    // share the node name.
    const leftovers = await this.opts.backend.list({
      [LABEL_NODE]: this.opts.nodeId,
      [LABEL_HOST]: this.hostKey,
    });
    for (const h of leftovers) {
      this.opts.log.warn("reaping an agent sandbox left by an earlier agent host", {
        sandbox: h.id,
        agent_id: h.agentId,
      });
      await this.opts.backend.destroy(h);
    }
    const agentsDir = path.join(this.opts.dataDir, "agents");
    mkdirSync(agentsDir, { recursive: true, mode: 0o700 });
    for (const id of readdirSync(agentsDir))
      rmSync(path.join(agentsDir, id, "run"), { recursive: true, force: true });
    for (let i = 0; i < this.opts.numAgents; i++) await this.startAgent();
  }

  /** Adds one agent: its folders, its model proxy and its sandbox, started. */
  async startAgent(id = `agent-${this.nextIndex++}`): Promise<Agent> {
    const o = this.opts;
    const dir = path.join(o.dataDir, "agents", id);
    const workspace = path.join(dir, "workspace");
    const configDir = path.join(dir, "claude-config");
    const runDir = path.join(dir, "run");
    for (const d of [workspace, configDir]) mkdirSync(d, { recursive: true, mode: 0o700 });
    // The agent writes in its workspace and config folder; the run folder is ours alone, made
    // anew each time, and mounted read-only: nothing the agent did there is ever followed.
    const user = this.userOf(id);
    const owner = this.ownerOf(id);
    if (owner) for (const d of [workspace, configDir]) ownTree(d, owner);
    freshRunDir(runDir, owner);
    let proxy: ModelProxy | undefined;
    let broker: AgentBroker | undefined;
    let lifeline: Lifeline | undefined;
    let sandbox: SandboxHandle | undefined;
    try {
      proxy = await startModelProxy({
        socketPath: path.join(runDir, "model.sock"),
        upstream: o.settings.baseUrl,
        apiKey: o.settings.apiKey,
        owner,
        log: o.log.child({ agent_id: id }),
      });
      const env: Record<string, string> = {
        CONDUCTOR_MODEL_SOCKET: proxy.socketPath,
        CONDUCTOR_MODEL_PORT: String(FORWARDER_PORT),
      };
      if (this.contained && owner) {
        // The container ends when this AgentHost does (process sandboxes: --die-with-parent).
        // Its socket is the container's own user's, which only a root AgentHost can give.
        const [infraUid, infraGid] = SANDBOX_INFRA_USER.split(":").map(Number);
        lifeline = await startLifeline(path.join(runDir, "lifeline.sock"), {
          uid: infraUid!,
          gid: infraGid!,
        });
        env["CONDUCTOR_LIFELINE_SOCKET"] = lifeline.socketPath;
      }
      if (o.broker) {
        broker = await setUpAgentBroker({
          runDir,
          agentId: id,
          secret: o.broker.secret,
          brokerSocket: o.broker.socketPath,
          // Inside an agent image node is on PATH; locally it is the node running us.
          nodePath: this.contained ? "node" : process.execPath,
          owner,
          log: o.log,
        });
      }
      sandbox = await o.backend.create({
        nodeId: o.nodeId,
        agentId: id,
        image: o.sandbox.image,
        mounts: [
          { hostPath: workspace },
          { hostPath: configDir },
          { hostPath: runDir, readOnly: true },
        ],
        env,
        labels: { [LABEL_NODE]: o.nodeId, [LABEL_AGENT]: id, [LABEL_HOST]: this.hostKey },
        limits: {
          memoryBytes: o.sandbox.memoryBytes,
          cpus: o.sandbox.cpus,
          pids: o.sandbox.pids,
          ulimits: o.sandbox.ulimits,
        },
        network: o.sandbox.network,
        user: `${user.uid}:${user.gid}`,
      });
      await o.backend.start(sandbox);
    } catch (e) {
      if (sandbox) await o.backend.destroy(sandbox).catch(() => undefined);
      await proxy?.close();
      await broker?.close();
      await lifeline?.close();
      throw e;
    }
    const agent = create(AgentSchema, {
      id,
      nodeId: o.nodeId,
      state: AgentState.IDLE,
      workspace,
      runtime: o.backend.name,
    });
    const slot: AgentSlot = {
      agent,
      dir,
      sandbox,
      proxy,
      ...(lifeline ? { lifeline } : {}),
      unwatch: new AbortController(),
      ...(broker ? { broker } : {}),
    };
    this.slots.set(id, slot);
    this.watch(slot);
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
    await this.opts.backend.destroy(slot.sandbox);
    await slot.proxy.close();
    await slot.broker?.close();
    await slot.lifeline?.close();
  }

  /** All agents, in start order. */
  agents(): Agent[] {
    return [...this.slots.values()].map((s) => s.agent);
  }

  /**
   * Runs a task on an agent; outputs go to onOutput as they come. Throws at once (before
   * anything runs) when the agent is unknown or not idle.
   */
  run(
    agentId: string,
    taskId: string,
    spec: TaskSpec,
    signal: AbortSignal,
    onOutput: (o: AgentOutput) => void,
  ): Promise<RunOutcome> {
    const slot = this.slot(agentId);
    if (slot.run || slot.agent.state !== AgentState.IDLE) {
      throw new AgentBusyError(
        `agent ${agentId} is not idle (${AgentState[slot.agent.state]}${slot.agent.taskId ? `, task ${slot.agent.taskId}` : ""})`,
      );
    }
    slot.agent.state = AgentState.BUSY;
    slot.agent.taskId = taskId;
    return this.execute(slot, taskId, spec, signal, onOutput);
  }

  private async execute(
    slot: AgentSlot,
    taskId: string,
    spec: TaskSpec,
    signal: AbortSignal,
    onOutput: (o: AgentOutput) => void,
  ): Promise<RunOutcome> {
    const agentId = slot.agent.id;
    const workspace = slot.agent.workspace;
    if (this.opts.workspacePolicy === "clean") {
      for (const entry of readdirSync(workspace))
        rmSync(path.join(workspace, entry), { recursive: true, force: true });
    }
    const abort = new AbortController();
    const onAbort = () => abort.abort();
    signal.addEventListener("abort", onAbort);
    slot.proxy.take();
    const log = this.opts.log.child({ agent_id: agentId, task_id: taskId });
    log.info("run started");
    const settings: RunSettings = {
      ...this.opts.settings,
      // Every runtime reaches the model through the proxy: the key never enters a sandbox.
      apiKey: PLACEHOLDER_KEY,
      baseUrl: `http://127.0.0.1:${FORWARDER_PORT}`,
    };
    const runCli = async () => {
      // The Broker's tools only when it answers now; else the run says why it has none.
      const tools =
        slot.broker && this.brokerTools ? await this.brokerTools(slot.broker, agentId) : undefined;
      if (tools && !tools.offered) {
        log.warn("running without the Broker's tools", { reason: tools.notice });
        onOutput(noticeOutput(tools.notice));
      }
      return runClaude({
        spec,
        settings: { ...settings, ...(tools?.offered ? tools.settings : {}) },
        place: {
          agentId,
          taskId,
          workspace,
          configDir: path.join(slot.dir, "claude-config"),
          agentDir: slot.dir,
        },
        exec: (req) => this.opts.backend.exec(slot.sandbox, req),
        hostPath: this.contained ? "/usr/local/bin:/usr/bin:/bin" : this.opts.hostPath,
        signal: abort.signal,
        onOutput,
      }).then((outcome) => this.explainDeath(slot, outcome));
    };
    const observer = this.opts.observer;
    const done = observer ? observer.cliRun({ taskId, agentId }, runCli) : runCli();
    slot.run = { taskId, abort, done };
    try {
      const outcome = await done;
      const metered = slot.proxy.take();
      log.info("run ended", {
        state: TaskState[outcome.state],
        error: outcome.result.error || undefined,
        proxy_usage: metered,
      });
      return outcome;
    } finally {
      signal.removeEventListener("abort", onAbort);
      slot.run = undefined;
      slot.agent.tasksCompleted++;
      slot.agent.taskId = "";
      if (slot.agent.state === AgentState.BUSY) slot.agent.state = AgentState.IDLE;
    }
  }

  /** Ends the run of a task, if this host has it; resolves when its CLI is gone. */
  async cancel(taskId: string): Promise<boolean> {
    for (const slot of this.slots.values()) {
      if (slot.run?.taskId === taskId) {
        slot.run.abort.abort();
        await slot.run.done;
        return true;
      }
    }
    return false;
  }

  /** Ends every run and removes every sandbox; for shutdown. */
  async close(): Promise<void> {
    this.closed = true;
    // A replacement under way finishes first, so its new sandbox is stopped below too.
    await Promise.all([...this.replacing]);
    await Promise.all([...this.slots.keys()].map((id) => this.stopAgent(id)));
    await this.opts.backend.close();
  }

  /** A failed run in a sandbox that died says why the sandbox died (e.g. out of memory). */
  private async explainDeath(slot: AgentSlot, outcome: RunOutcome): Promise<RunOutcome> {
    if (outcome.state !== TaskState.FAILED || !this.contained) return outcome;
    let status = await this.opts.backend.inspect(slot.sandbox).catch(() => undefined);
    if (status?.running && !outcome.result.sessionId) {
      // The CLI vanished without a result: the engine may not have noticed its container's end yet.
      status = await this.opts.backend
        .waitForExit(slot.sandbox, AbortSignal.timeout(DEATH_NOTICE_MS))
        .catch(() => status);
    }
    if (!status || status.running) return outcome;
    const why = status.oomKilled
      ? "out of memory (the container was OOM-killed)"
      : (status.reason ?? "it stopped");
    outcome.result.error = `the agent's container died during the run: ${why}`;
    return outcome;
  }

  /** Replaces an agent whose sandbox dies by itself (crash, OOM kill, docker kill). */
  private watch(slot: AgentSlot): void {
    const gone = () => slot.unwatch.signal.aborted || this.closed;
    this.opts.backend.waitForExit(slot.sandbox, slot.unwatch.signal).then(
      (status) => {
        if (gone()) return;
        const replaced: Promise<void> = this.replace(slot, status)
          .catch((e: unknown) => {
            this.opts.log.error("could not replace the agent", {
              agent_id: slot.agent.id,
              error: e,
            });
          })
          .then(() => void this.replacing.delete(replaced));
        this.replacing.add(replaced);
      },
      (e: unknown) => {
        // The engine could not be asked (its connection failed): ask again, never crash.
        if (gone()) return;
        this.opts.log.warn("lost the watch on an agent's sandbox; watching again", {
          agent_id: slot.agent.id,
          error: e,
        });
        setTimeout(() => gone() || this.watch(slot), REWATCH_MS).unref();
      },
    );
  }

  private async replace(slot: AgentSlot, status: SandboxStatus): Promise<void> {
    const why = status.oomKilled ? "out of memory" : (status.reason ?? "stopped");
    this.opts.log.warn("agent sandbox died; replacing the agent", {
      agent_id: slot.agent.id,
      reason: why,
    });
    slot.agent.state = AgentState.FAILED;
    await slot.run?.done;
    this.slots.delete(slot.agent.id);
    await this.opts.backend.destroy(slot.sandbox).catch(() => undefined);
    await slot.proxy.close();
    await slot.broker?.close();
    await slot.lifeline?.close();
    if (this.closed) return;
    await this.startAgent(slot.agent.id).catch((e: unknown) => {
      this.opts.log.error("could not replace the agent", { agent_id: slot.agent.id, error: e });
    });
  }

  private slot(id: string): AgentSlot {
    const slot = this.slots.get(id);
    if (!slot) throw new UnknownAgentError(`agent "${id}" not found on node ${this.opts.nodeId}`);
    return slot;
  }
}
