import { readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import { TaskState, type AgentOutput, type TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import type { Capabilities, RuntimeBackend, SandboxStatus } from "../../plugins/runtime.ts";
import type { Logger } from "../shared/log.ts";
import { FORWARDER_PORT, type AgentParts } from "./provision.ts";
import { noticeOutput, type BrokerToolsCheck } from "./broker-tools.ts";
import { runClaude, type OutputFlow, type RunOutcome, type RunSettings } from "./run.ts";
import type { Watched } from "./supervise.ts";
import type { AgentHostObserver } from "./telemetry.ts";

/** An agent as the AgentHost holds it: its parts, its state, and the run under way. */
export interface AgentSlot extends Watched, AgentParts {
  agent: Agent;
  dir: string;
  run?: { taskId: string; abort: AbortController; done: Promise<RunOutcome> };
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
}

/** How long a failed run waits for the engine to report its container's death. */
const DEATH_NOTICE_MS = 2000;
/** The CLI insists on some key; the real one is added by the proxy, outside the container. */
const PLACEHOLDER_KEY = "sk-conductor-proxy-adds-the-real-key";

/**
 * Runs one task on an agent already marked BUSY: the CLI through the backend's exec, the
 * model through the agent's proxy, the run held by its lifeline (cut when it ends, so nothing
 * of it outlives it, engine or no engine); the agent is IDLE again after, unless it was lost.
 */
export async function executeRun(
  c: RunContext,
  slot: AgentSlot,
  taskId: string,
  spec: TaskSpec,
  signal: AbortSignal,
  onOutput: (o: AgentOutput) => void,
  flow?: OutputFlow,
): Promise<RunOutcome> {
  const agentId = slot.agent.id;
  const workspace = slot.agent.workspace;
  if (c.workspacePolicy === "clean") {
    for (const entry of readdirSync(workspace))
      rmSync(path.join(workspace, entry), { recursive: true, force: true });
  }
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  signal.addEventListener("abort", onAbort);
  slot.proxy.take();
  const log = c.log.child({ agent_id: agentId, task_id: taskId });
  log.info("run started");
  const settings: RunSettings = {
    ...c.settings,
    // Every runtime reaches the model through the proxy: the key never enters a sandbox.
    apiKey: PLACEHOLDER_KEY,
    baseUrl: `http://127.0.0.1:${FORWARDER_PORT}`,
  };
  slot.lifeline?.arm();
  const runCli = async () => {
    // The Broker's tools only when it answers now; else the run says why it has none.
    const tools =
      slot.broker && c.brokerTools ? await c.brokerTools(slot.broker, agentId) : undefined;
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
      exec: (req) => c.backend.exec(slot.sandbox, req),
      hostPath: c.caps.image ? "/usr/local/bin:/usr/bin:/bin" : c.hostPath,
      signal: abort.signal,
      onOutput,
      flow,
    }).then((outcome) => {
      // Nothing of the run outlives it, whatever the engine says (or cannot).
      slot.lifeline?.cut();
      // Ended because its engine was lost (not cancelled by its caller): that is a failure.
      if (slot.lost && !signal.aborted && outcome.state === TaskState.CANCELLED) {
        outcome.state = TaskState.FAILED;
      }
      return explainDeath(c, slot, outcome);
    });
  };
  const done = c.observer ? c.observer.cliRun({ taskId, agentId }, runCli) : runCli();
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
    slot.lifeline?.cut();
    signal.removeEventListener("abort", onAbort);
    slot.run = undefined;
    slot.agent.tasksCompleted++;
    slot.agent.taskId = "";
    if (slot.agent.state === AgentState.BUSY) slot.agent.state = AgentState.IDLE;
  }
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
  try {
    status = await c.backend.inspect(slot.sandbox);
    if (status.running && !outcome.result.sessionId) {
      // The CLI vanished without a result: the engine may not have noticed its container's end yet.
      status = await c.backend
        .waitForExit(slot.sandbox, AbortSignal.timeout(DEATH_NOTICE_MS))
        .catch(() => status);
    }
  } catch (e) {
    c.engineFailed(slot, e);
  }
  if (slot.lost) {
    const ended = slot.lifeline ? "; the run was ended through its lifeline" : "";
    outcome.result.error = `the container engine could not be reached during the run${ended}: ${slot.lost}`;
    return outcome;
  }
  if (!status || status.running) return outcome;
  const why = status.oomKilled
    ? "out of memory (the container was OOM-killed)"
    : (status.reason ?? "it stopped");
  outcome.result.error = `the agent's container died during the run: ${why}`;
  return outcome;
}
