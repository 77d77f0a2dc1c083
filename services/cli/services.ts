import path from "node:path";
import { AgentHostService } from "../../gen/conductor/v1/agent_host_pb.js";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { AgentHost } from "../agent-host/host.ts";
import { loadBackend } from "../agent-host/backends.ts";
import { agentHostRoutes } from "../agent-host/routes.ts";
import { Orchestrator } from "../orchestrator/orchestrator.ts";
import { orchestratorRoutes } from "../orchestrator/routes.ts";
import { resolveClaudePath } from "../shared/claude-path.ts";
import type { Config } from "../shared/config.ts";
import type { Logger } from "../shared/log.ts";
import { serveUnix, type UnixServer } from "../shared/transport.ts";

/** A started service: stop() ends it cleanly. */
export interface Running {
  stop(): Promise<void>;
}

/** The AgentHost's socket in the socket folder. */
export function agentHostSocket(config: Config): string {
  return path.join(config.communication.socket_dir, "agent-host.sock");
}

/** Starts an AgentHost with its agents and serves it on its Unix socket. */
export async function startAgentHost(
  config: Config,
  log: Logger,
  hostPath: string,
): Promise<Running & { host: AgentHost; server: UnixServer }> {
  const a = config.agent;
  const backend = await loadBackend(config);
  const contained = backend.name !== "process";
  const host = new AgentHost({
    backend,
    sandbox: {
      image: config.runtime.image,
      network: config.runtime.network,
      user: config.runtime.user,
      memoryBytes: a.container_memory,
      cpus: a.container_cpu,
      pids: a.container_pids,
      ulimits: config.runtime.ulimits,
      stopGraceMs: config.runtime.stop_grace_seconds * 1000,
    },
    nodeId: config.orchestrator.node_id,
    numAgents: config.orchestrator.num_agents,
    dataDir: config.storage.data_dir,
    workspacePolicy: a.workspace_policy,
    hostPath,
    log: log.child({ service: "agent-host" }),
    settings: {
      // Inside an agent image the CLI is on PATH; on the process backend it is the npm package's.
      claudePath: contained ? a.claude_path || "claude" : resolveClaudePath(a.claude_path),
      model: a.model,
      permissionMode: a.permission_mode,
      allowedTools: a.allowed_tools,
      idleTimeoutMs: a.idle_timeout_seconds * 1000,
      resultGraceMs: a.result_grace_seconds * 1000,
      defaultTimeoutMs: config.orchestrator.default_timeout_seconds * 1000,
      apiKey: a.anthropic_api_key,
      baseUrl: a.anthropic_base_url,
      maxApiRetries: a.max_api_retries,
    },
  });
  try {
    await host.start();
  } catch (e) {
    await host.close().catch(() => undefined);
    throw e;
  }
  const server = await serveUnix({
    socketPath: agentHostSocket(config),
    services: [AgentHostService],
    routes: agentHostRoutes(host),
  });
  log.info("agent host serving", {
    socket: server.socketPath,
    agents: config.orchestrator.num_agents,
  });
  return {
    host,
    server,
    stop: async () => {
      await host.close();
      await server.close();
    },
  };
}

/** Starts the Orchestrator and serves it on its Unix socket. */
export async function startOrchestrator(
  config: Config,
  log: Logger,
): Promise<Running & { orchestrator: Orchestrator; server: UnixServer }> {
  const o = config.orchestrator;
  const orchestrator = new Orchestrator({
    dataDir: config.storage.data_dir,
    agentHosts: o.agent_hosts.length > 0 ? o.agent_hosts : [agentHostSocket(config)],
    maxWorkers: o.max_workers,
    defaultMaxAttempts: o.default_max_attempts,
    retryBackoffMs: o.retry_backoff_seconds * 1000,
    maxPromptBytes: o.max_prompt_bytes,
    rpcTimeoutMs: config.communication.message_timeout * 1000,
    defaultTimeoutMs: o.default_timeout_seconds * 1000,
    log: log.child({ service: "orchestrator" }),
  });
  orchestrator.start();
  const server = await serveUnix({
    socketPath: config.communication.socket_path,
    services: [OrchestratorService],
    routes: orchestratorRoutes(orchestrator),
  });
  log.info("orchestrator serving", {
    socket: server.socketPath,
    data_dir: config.storage.data_dir,
  });
  return {
    orchestrator,
    server,
    stop: async () => {
      await server.close();
      await orchestrator.close();
    },
  };
}
