import { mkdirSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { AgentSchema, AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import type { AgentOutput, TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { execProcess, killMarked } from "../../plugins/runtime-process/process-backend.ts";
import type { Logger } from "../shared/log.ts";
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
  run?: { taskId: string; abort: AbortController; done: Promise<RunOutcome> };
}

/** What an AgentHost is configured with. */
export interface AgentHostOptions {
  nodeId: string;
  numAgents: number;
  dataDir: string;
  workspacePolicy: "keep" | "clean";
  settings: RunSettings;
  hostPath: string;
  log: Logger;
}

/**
 * One node's agent pool on the process backend: each agent has its own workspace and
 * CLI config folder and runs one task at a time.
 */
export class AgentHost {
  private readonly slots = new Map<string, AgentSlot>();
  private nextIndex = 1;
  readonly opts: AgentHostOptions;

  constructor(opts: AgentHostOptions) {
    this.opts = opts;
  }

  /** Reaps processes left by an earlier run of this host, then starts the configured agents. */
  start(): void {
    const agentsDir = path.join(this.opts.dataDir, "agents");
    mkdirSync(agentsDir, { recursive: true });
    for (const id of readdirSync(agentsDir)) {
      const reaped = killMarked(`CONDUCTOR_AGENT_DIR=${path.join(agentsDir, id)}`, "SIGKILL");
      if (reaped > 0) {
        this.opts.log.warn("reaped processes left running by an earlier agent host", {
          agent_id: id,
          processes: reaped,
        });
      }
    }
    for (let i = 0; i < this.opts.numAgents; i++) this.startAgent();
  }

  /** Adds one agent with fresh folders. */
  startAgent(): Agent {
    const id = `agent-${this.nextIndex++}`;
    const dir = path.join(this.opts.dataDir, "agents", id);
    const workspace = path.join(dir, "workspace");
    mkdirSync(workspace, { recursive: true });
    mkdirSync(path.join(dir, "claude-config"), { recursive: true });
    const agent = create(AgentSchema, {
      id,
      nodeId: this.opts.nodeId,
      state: AgentState.IDLE,
      workspace,
      runtime: "process",
    });
    this.slots.set(id, { agent, dir });
    return agent;
  }

  /** Stops an agent, ending its running task first. */
  async stopAgent(id: string): Promise<void> {
    const slot = this.slot(id);
    slot.agent.state = AgentState.STOPPING;
    if (slot.run) {
      slot.run.abort.abort();
      await slot.run.done;
    }
    this.slots.delete(id);
  }

  /** All agents, in start order. */
  agents(): Agent[] {
    return [...this.slots.values()].map((s) => s.agent);
  }

  /** Runs a task on an agent; outputs go to onOutput as they come. */
  async run(
    agentId: string,
    taskId: string,
    spec: TaskSpec,
    signal: AbortSignal,
    onOutput: (o: AgentOutput) => void,
  ): Promise<RunOutcome> {
    const slot = this.slot(agentId);
    if (slot.run || slot.agent.state !== AgentState.IDLE) {
      throw new AgentBusyError(`agent ${agentId} is busy with task ${slot.agent.taskId}`);
    }
    const workspace = slot.agent.workspace;
    if (this.opts.workspacePolicy === "clean") {
      rmSync(workspace, { recursive: true, force: true });
      mkdirSync(workspace, { recursive: true });
    }
    const abort = new AbortController();
    const onAbort = () => abort.abort();
    signal.addEventListener("abort", onAbort);
    slot.agent.state = AgentState.BUSY;
    slot.agent.taskId = taskId;
    const log = this.opts.log.child({ agent_id: agentId, task_id: taskId });
    log.info("run started");
    const done = runClaude({
      spec,
      settings: this.opts.settings,
      place: {
        agentId,
        taskId,
        workspace,
        configDir: path.join(slot.dir, "claude-config"),
        agentDir: slot.dir,
      },
      exec: execProcess,
      hostPath: this.opts.hostPath,
      signal: abort.signal,
      onOutput,
    });
    slot.run = { taskId, abort, done };
    try {
      const outcome = await done;
      log.info("run ended", { state: outcome.state, error: outcome.result.error || undefined });
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

  /** Ends every run (their CLIs included); for shutdown. */
  async close(): Promise<void> {
    await Promise.all([...this.slots.keys()].map((id) => this.stopAgent(id)));
  }

  private slot(id: string): AgentSlot {
    const slot = this.slots.get(id);
    if (!slot) throw new UnknownAgentError(`agent "${id}" not found on node ${this.opts.nodeId}`);
    return slot;
  }
}
