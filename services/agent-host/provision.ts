import { createHash } from "node:crypto";
import { chmodSync, lchownSync, lstatSync, mkdirSync, rmSync } from "node:fs";
import path from "node:path";
import {
  LABEL_AGENT,
  LABEL_HOST,
  LABEL_NODE,
  LABEL_SPEC,
  type Capabilities,
  type RuntimeBackend,
  type SandboxHandle,
  type SandboxSpec,
} from "../../plugins/runtime.ts";
import { setUpAgentBroker, type AgentBroker, type BrokerAccess } from "../broker/access.ts";
import { mcpHandler } from "../broker/mcp-http.ts";
import { freshRunDir, ownTree, type AgentOwner } from "../shared/agent-files.ts";
import type { Logger } from "../shared/log.ts";
import { startLifeline, type Lifeline } from "./lifeline.ts";
import { startModelProxy, type ModelProxy } from "./model-proxy.ts";
import type { RunSettings } from "./run.ts";

/** Inside a container the CLI reaches the model proxy through this loopback forwarder. */
export const FORWARDER_PORT = 8080;

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

/** What making an agent's sandbox takes: the host's settings and who the agent is. */
export interface ProvisionContext {
  nodeId: string;
  dataDir: string;
  /** Names this AgentHost instance on everything it creates (LABEL_HOST). */
  hostKey: string;
  backend: RuntimeBackend;
  caps: Capabilities;
  sandbox: SandboxSettings;
  /** The model API the proxy forwards to, and the key it adds. */
  model: { baseUrl: string; apiKey: string; prices?: RunSettings["prices"] };
  broker?: BrokerAccess | undefined;
  log: Logger;
}

/** An agent's running parts: its sandbox and the sockets this AgentHost serves it. */
export interface AgentParts {
  sandbox: SandboxHandle;
  proxy: ModelProxy;
  /** Runtimes with capabilities.runLifeline, when the agent's user can be given it (root). */
  lifeline?: Lifeline;
  /** The agent's way to the Broker (its credential; its tools served on its proxy), when one is configured. */
  broker?: AgentBroker;
}

/** Where an agent's folders are. */
export function agentPaths(dataDir: string, id: string) {
  const dir = path.join(dataDir, "agents", id);
  return {
    dir,
    workspace: path.join(dir, "workspace"),
    configDir: path.join(dir, "claude-config"),
    runDir: path.join(dir, "run"),
    /**
     * Holds the worktree of the agent's current task (task-place.ts). Ours, not the agent's:
     * the agent writes in the worktree but can neither replace it nor add beside it.
     */
    taskDir: path.join(dir, "task"),
  };
}

/**
 * Where a task's worktree is inside every sandbox, whichever agent runs it:
 * `<data>/worktrees/<task id>/<repository name>` (task-place.ts). The same path on every agent
 * keeps a resumed session's file paths right on another agent.
 */
export function worktreesDir(dataDir: string): string {
  return path.join(dataDir, "worktrees");
}

/** Names an AgentHost by its data folder: stable across its restarts, distinct between instances. */
export function hostKeyOf(dataDir: string): string {
  return createHash("sha256").update(path.resolve(dataDir)).digest("hex").slice(0, 16);
}

/**
 * The sandbox agent `id` runs in, the same each time for the same settings (its sockets at
 * fixed paths in its run folder), labelled with a digest of itself: a restarted AgentHost
 * re-adopts a sandbox only when the digest matches what it would create now.
 */
export function sandboxSpec(
  c: ProvisionContext,
  id: string,
  user: AgentOwner,
  lifeline: boolean,
): SandboxSpec {
  const { workspace, configDir, runDir, taskDir } = agentPaths(c.dataDir, id);
  const env: Record<string, string> = {
    CONDUCTOR_MODEL_SOCKET: path.join(runDir, "model.sock"),
    CONDUCTOR_MODEL_PORT: String(FORWARDER_PORT),
  };
  if (lifeline) env["CONDUCTOR_RUN_LIFELINE"] = path.join(runDir, "lifeline.sock");
  const spec: SandboxSpec = {
    nodeId: c.nodeId,
    agentId: id,
    image: c.sandbox.image,
    mounts: [
      { hostPath: workspace },
      { hostPath: configDir },
      { hostPath: runDir, readOnly: true },
      // Where execs cannot bind a task's worktree themselves, the agent's folder holding it is
      // bound where every agent sees its task's worktree (task-place.ts).
      ...(c.caps.execMounts ? [] : [{ hostPath: taskDir, sandboxPath: worktreesDir(c.dataDir) }]),
    ],
    env,
    labels: { [LABEL_NODE]: c.nodeId, [LABEL_AGENT]: id, [LABEL_HOST]: c.hostKey },
    limits: {
      memoryBytes: c.sandbox.memoryBytes,
      cpus: c.sandbox.cpus,
      pids: c.sandbox.pids,
      ulimits: c.sandbox.ulimits,
    },
    network: c.sandbox.network,
    user: `${user.uid}:${user.gid}`,
  };
  const digest = createHash("sha256")
    .update(JSON.stringify({ ...spec, labels: undefined }))
    .digest("hex")
    .slice(0, 16);
  spec.labels[LABEL_SPEC] = digest;
  return spec;
}

/**
 * Makes agent `id` ready: its folders, its model proxy (serving its Broker tools), lifeline, and its
 * sandbox — created and started, or `adopted` (one found running after a restart, made from
 * the same spec: its run folder is the same folder, so it sees the new sockets). On failure
 * everything made here is undone.
 */
export async function provision(
  c: ProvisionContext,
  id: string,
  user: AgentOwner,
  owner: AgentOwner | undefined,
  adopted?: SandboxHandle,
): Promise<AgentParts> {
  const { workspace, configDir, runDir, taskDir } = agentPaths(c.dataDir, id);
  for (const d of [workspace, configDir]) mkdirSync(d, { recursive: true, mode: 0o700 });
  ourFolder(taskDir);
  // The agent writes in its workspace and config folder; the run folder is ours alone, its
  // content made anew each time, and mounted read-only: nothing the agent did there is followed.
  if (owner) for (const d of [workspace, configDir]) ownTree(d, owner);
  freshRunDir(runDir, owner);
  const spec = sandboxSpec(c, id, user, lifelined(c.caps, owner));
  const log = c.log.child({ agent_id: id });
  const made: Partial<AgentParts> = {};
  try {
    if (c.broker) made.broker = await setUpAgentBroker({ agentId: id, access: c.broker, log });
    made.proxy = await startModelProxy({
      socketPath: spec.env["CONDUCTOR_MODEL_SOCKET"]!,
      upstream: c.model.baseUrl,
      apiKey: c.model.apiKey,
      prices: c.model.prices,
      owner,
      log,
      // The agent's Broker tools, served here: which agent calls is which socket it came on.
      mcp: made.broker ? mcpHandler(made.broker, log) : undefined,
    });
    const lifelineSocket = spec.env["CONDUCTOR_RUN_LIFELINE"];
    if (lifelineSocket) made.lifeline = await startLifeline(lifelineSocket, owner);
    if (adopted) {
      made.sandbox = adopted;
    } else {
      made.sandbox = await c.backend.create(spec);
      await c.backend.start(made.sandbox);
    }
    return made as AgentParts;
  } catch (e) {
    await release(c.backend, made, !adopted);
    throw e;
  }
}

/**
 * Whether agent runs hold a lifeline: where the runtime has them, and the agent's user can be
 * given the socket — a root AgentHost's agents, or a process sandbox's run as this user. An
 * image's own user could not reach a non-root AgentHost's socket: every run would end at once.
 */
export function lifelined(caps: Capabilities, owner: AgentOwner | undefined): boolean {
  return caps.runLifeline && (owner !== undefined || !caps.image);
}

/** Makes `dir` a folder of this service's user, mode 0755 (what else is there, a link say, goes). */
function ourFolder(dir: string): void {
  try {
    if (!lstatSync(dir).isDirectory()) rmSync(dir, { force: true });
  } catch {
    // not there yet
  }
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  lchownSync(dir, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
  chmodSync(dir, 0o755);
}

/** Closes an agent's sockets and, when `destroy`, removes its sandbox (errors logged by the caller). */
export async function release(
  backend: RuntimeBackend,
  parts: Partial<AgentParts>,
  destroy: boolean,
): Promise<void> {
  try {
    if (destroy && parts.sandbox) await backend.destroy(parts.sandbox);
  } finally {
    await parts.proxy?.close();
    await parts.lifeline?.close();
  }
}

/** Whether a sandbox found after a restart was made from the spec this AgentHost would make now. */
export function sameSpec(h: SandboxHandle, spec: SandboxSpec): boolean {
  return h.labels[LABEL_SPEC] !== undefined && h.labels[LABEL_SPEC] === spec.labels[LABEL_SPEC];
}
