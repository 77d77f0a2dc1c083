import { readFileSync } from "node:fs";
import path from "node:path";
import { AgentHostService } from "../../gen/conductor/v1/agent_host_pb.js";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { loginAccountsAmong } from "../agent-host/accounts.ts";
import { AgentHost } from "../agent-host/host.ts";
import { loadBrokerSecret, localBroker, remoteBroker } from "../broker/access.ts";
import { brokerOptions, startBrokerServer, type BrokerServer } from "../broker/serve.ts";
import { loadBackend } from "../agent-host/backends.ts";
import { agentHostRoutes } from "../agent-host/routes.ts";
import {
  createAgentHostObserver,
  observeBackend,
  registerAgentGauge,
} from "../agent-host/telemetry.ts";
import { loadTaskTypes } from "../orchestrator/load-task-types.ts";
import { Orchestrator } from "../orchestrator/orchestrator.ts";
import { orchestratorRoutes } from "../orchestrator/routes.ts";
import { isLoopback, serveConsole, type ConsoleServer } from "../orchestrator/console.ts";
import { parseHostPort } from "../shared/host-port.ts";
import {
  createOrchestratorObserver,
  registerSpendGauges,
  registerTaskGauges,
} from "../orchestrator/telemetry.ts";
import { resolveClaudePath } from "../shared/claude-path.ts";
import type { Config } from "../shared/config.ts";
import type { Logger } from "../shared/log.ts";
import type { Observability } from "../shared/observability.ts";
import { lockService, type ServiceLock } from "../shared/lock.ts";
import { serveUnix, type UnixServer } from "../shared/transport.ts";
import { serveTls, type TcpServer } from "../shared/tcp.ts";
import { TlsMaterial, type Role } from "../shared/tls.ts";
import { conductorVersion } from "../shared/version.ts";
import { Membership } from "../agent-host/join.ts";
import { NodeService } from "../../gen/conductor/v1/node_pb.js";
import { nodeRoutes } from "../orchestrator/routes.ts";
import { availableParallelism, totalmem } from "node:os";
import { create } from "@bufbuild/protobuf";
import { ResourcesSchema } from "../../gen/conductor/v1/task_pb.js";

/** A started service: stop() ends it cleanly. */
export interface Running {
  stop(): Promise<void>;
  /** Its TCP listeners' addresses by ready-line key (listen, broker_listen, console: a URL). */
  listens?: Record<string, string>;
}

/**
 * The TLS material of a service that listens on TCP or joins over it (tls.*), which must hold
 * a certificate of `role`. Throws naming what is missing or wrong.
 */
export function tlsMaterial(
  config: Config,
  role: Role | Role[],
  why: string,
  log: Logger,
): TlsMaterial {
  const roles = typeof role === "string" ? [role] : role;
  const t = config.tls;
  const missing = (["ca_file", "cert_file", "key_file"] as const).filter((k) => !t[k]);
  if (missing.length > 0) {
    throw new Error(
      `${why} needs ${missing.map((k) => `tls.${k}`).join(", ")} (make them with \`conductor certs init\` and \`conductor certs issue --role ${roles[0]}\`)`,
    );
  }
  const material = TlsMaterial.load(
    { caFile: t.ca_file, certFile: t.cert_file, keyFile: t.key_file },
    log,
  );
  const id = material.current().identity;
  if (!roles.includes(id.role)) {
    material.close();
    throw new Error(
      `${t.cert_file} is a certificate of ${id.spiffeId}; ${why} needs one of role ${roles.join(" or ")} (conductor certs issue --role ${roles[0]})`,
    );
  }
  return material;
}

/** A TCP listener's address as host:port (IPv6 in brackets). */
function hostPort(tcp: TcpServer): string {
  return `${tcp.host.includes(":") ? `[${tcp.host}]` : tcp.host}:${tcp.port}`;
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
  obs?: Observability,
): Promise<Running & { host: AgentHost; server: UnixServer }> {
  // Before anything else: a second AgentHost on this folder would reap the live agents.
  const lock = await lockService("agent-host", config.storage.data_dir);
  try {
    return await serveAgentHost(config, log, hostPath, lock, obs);
  } catch (e) {
    await lock.release();
    throw e;
  }
}

async function serveAgentHost(
  config: Config,
  serviceLog: Logger,
  hostPath: string,
  lock: ServiceLock,
  obs?: Observability,
): Promise<Running & { host: AgentHost; server: UnixServer }> {
  const a = config.agent;
  const joining = config.agent_host.join;
  const material = joining
    ? tlsMaterial(config, "agent-host", `agent_host.join (${joining})`, serviceLog)
    : undefined;
  // A joined node is named by its certificate, and so are its agents and its logs, fleet-wide.
  const nodeId = material ? material.current().identity.name : config.orchestrator.node_id;
  const log = serviceLog.child({ node: nodeId });
  const telemetry = { ...obs, nodeId };
  // What this node offers tasks (GetCapacity, RegisterNode): agent_host.*, else the machine's.
  const offer = {
    version: conductorVersion(),
    labels: config.agent_host.labels,
    cpus: config.agent_host.cpus || availableParallelism(),
    memoryBytes: BigInt(config.agent_host.memory || totalmem()),
  };
  const backend = observeBackend(await loadBackend(config), telemetry);
  const fingerprint = await backend.fingerprint();
  // In an image the CLI is the image's; else the npm package's on this machine.
  const contained = fingerprint.capabilities.image;
  const host = new AgentHost({
    backend,
    fingerprint,
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
    nodeId,
    numAgents: config.orchestrator.num_agents,
    ...(material ? { agentIdPrefix: `${nodeId}:` } : {}),
    offer,
    dataDir: config.storage.data_dir,
    workspacePolicy: a.workspace_policy,
    workspaces: {
      author: { name: a.git_author_name, email: a.git_author_email },
      allowedHostPaths: a.allowed_host_paths,
      checkTimeoutMs: a.check_timeout_seconds * 1000,
      gitTimeoutMs: a.git_timeout_seconds * 1000,
      commitBounds: { maxFileBytes: a.max_commit_file_bytes, maxChangeBytes: a.max_change_bytes },
      protectedPaths: [config.communication.socket_dir, path.dirname(config.broker.socket_path)],
    },
    hostPath,
    log: log.child({ service: "agent-host" }),
    broker: !a.broker_tools
      ? undefined
      : material && config.agent_host.broker
        ? remoteBroker(config.agent_host.broker, material)
        : localBroker(loadBrokerSecret(config.storage.data_dir), config.broker.socket_path),
    observer: obs?.tracer
      ? createAgentHostObserver({ ...telemetry, runtime: backend.name })
      : undefined,
    settings: {
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
      prices: a.prices,
    },
  });
  if (obs?.registry) registerAgentGauge(obs.registry, () => host.agents());
  if (backend.name === "process" && config.runtime.process_sandbox === "none") warnUnsandboxed(log);
  else warnSharedUids(config, log);
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
    interceptors: obs?.serverInterceptors ?? [],
    log,
  });
  log.info("agent host serving", {
    socket: server.socketPath,
    agents: config.orchestrator.num_agents,
  });
  const membership = material
    ? new Membership({
        address: joining,
        material,
        host,
        info: {
          runtime: backend.name,
          version: offer.version,
          labels: offer.labels,
          capacity: create(ResourcesSchema, { cpus: offer.cpus, memoryBytes: offer.memoryBytes }),
          agentsTotal: config.orchestrator.num_agents,
        },
        interceptors: obs?.clientInterceptors ?? [],
        log: log.child({ service: "agent-host" }),
      })
    : undefined;
  membership?.start();
  return {
    host,
    server,
    stop: async () => {
      await membership?.close();
      material?.close();
      await host.close();
      await server.close();
      await lock.release();
    },
  };
}

/**
 * The operator opted out of the process sandbox: say so where nobody can miss it, on every
 * start (a log line at warn, and a banner on stderr).
 */
function warnUnsandboxed(log: Logger): void {
  const what =
    "AGENTS ARE NOT SANDBOXED (runtime.process_sandbox: none): every agent runs as this service's user, sees and can change everything it can, and reaches the network";
  log.warn(what, { runtime: "process", process_sandbox: "none" });
  process.stderr.write(
    `\n${"!".repeat(78)}\n!! ${what}.\n!! Remove runtime.process_sandbox: none (install bubblewrap) to contain them.\n${"!".repeat(78)}\n\n`,
  );
}

/**
 * Agents run as runtime.user's uid and up (one each): a person who can log in with one of
 * those uids could enter those agents' sandboxes. Say so at start, naming the accounts.
 */
function warnSharedUids(config: Config, log: Logger): void {
  if ((process.getuid?.() ?? 0) !== 0) return; // agents then run as this service's user
  const [uid] = config.runtime.user.split(":").map(Number);
  let passwd = "";
  try {
    passwd = readFileSync("/etc/passwd", "utf8");
  } catch {
    return; // no user database to compare with
  }
  const accounts = loginAccountsAmong(passwd, uid!, config.orchestrator.num_agents);
  if (accounts.length === 0) return;
  const who = accounts.map((a) => `${a.name} (uid ${a.uid})`).join(", ");
  const what = `agents run as uids ${uid}–${uid! + config.orchestrator.num_agents - 1} (runtime.user ${config.runtime.user}), which host accounts that can log in also use: ${who}; they could enter those agents' sandboxes and reach their sockets`;
  log.warn(what, { runtime_user: config.runtime.user });
  process.stderr.write(
    `conductor: WARNING: ${what}. Set runtime.user to a uid range no one logs in as (the default is 61000:61000).\n`,
  );
}

/** Starts the Orchestrator and serves it on its Unix socket. */
export async function startOrchestrator(
  config: Config,
  log: Logger,
  obs?: Observability,
  withLocalHost = true,
): Promise<Running & { orchestrator: Orchestrator; server: UnixServer; tcp?: TcpServer }> {
  const lock = await lockService("orchestrator", config.storage.data_dir);
  try {
    return await serveOrchestrator(config, log, lock, obs, withLocalHost);
  } catch (e) {
    await lock.release();
    throw e;
  }
}

async function serveOrchestrator(
  config: Config,
  log: Logger,
  lock: ServiceLock,
  obs: Observability | undefined,
  withLocalHost: boolean,
): Promise<Running & { orchestrator: Orchestrator; server: UnixServer; tcp?: TcpServer }> {
  const o = config.orchestrator;
  const listen = config.communication.listen;
  const consoleAt = config.observability.console === "-1" ? "" : config.observability.console;
  const remoteConsole = consoleAt !== "" && !isLoopback(parseHostPort(consoleAt).host);
  const material =
    listen || remoteConsole
      ? tlsMaterial(
          config,
          "orchestrator",
          listen
            ? `communication.listen (${listen})`
            : `observability.console on a non-loopback address (${consoleAt})`,
          log,
        )
      : undefined;
  // None named: the local AgentHost's socket; but listening on TCP without a local AgentHost,
  // nodes join and no socket is dialled.
  const hosts =
    o.agent_hosts.length > 0
      ? o.agent_hosts
      : listen && !withLocalHost
        ? []
        : [agentHostSocket(config)];
  const observer =
    obs && (obs.tracer || obs.registry)
      ? createOrchestratorObserver({ ...obs, defaultModel: config.agent.model })
      : undefined;
  // Every type file is read, and each problem named with its file, before anything is served.
  const types = await loadTaskTypes(o.task_types);
  const orchestrator = new Orchestrator({
    types,
    dataDir: config.storage.data_dir,
    agentHosts: hosts,
    nodeLeaseMs: o.node_lease_seconds * 1000,
    maxWorkers: o.max_workers,
    defaultMaxAttempts: o.default_max_attempts,
    retryBackoffMs: o.retry_backoff_seconds * 1000,
    maxPromptBytes: o.max_prompt_bytes,
    rpcTimeoutMs: config.communication.message_timeout * 1000,
    defaultTimeoutMs: o.default_timeout_seconds * 1000,
    unconfirmedAttemptTimeoutMs: o.unconfirmed_attempt_timeout_seconds * 1000,
    outputRetentionBytes: o.event_retention_bytes,
    spendLimits: o.spend_limits.map((l) => ({
      usdPerHour: l.usd_per_hour,
      labels: l.labels,
      windowMs: l.window_seconds * 1000,
    })),
    log: log.child({ service: "orchestrator" }),
    observer,
    hostInterceptors: obs?.clientInterceptors ?? [],
  });
  if (obs?.registry) {
    registerTaskGauges(obs.registry, orchestrator.store);
    registerSpendGauges(obs.registry, orchestrator.spendLimits);
  }
  orchestrator.start();
  const server = await serveUnix({
    socketPath: config.communication.socket_path,
    services: [OrchestratorService],
    routes: orchestratorRoutes(orchestrator),
    interceptors: obs?.serverInterceptors ?? [],
    log,
  });
  let tcp: TcpServer | undefined;
  let web: ConsoleServer | undefined;
  try {
    if (listen && material) {
      tcp = await serveTls({
        listen,
        material,
        services: [OrchestratorService, NodeService],
        routes: (router) => {
          orchestratorRoutes(orchestrator)(router);
          nodeRoutes(orchestrator)(router);
        },
        interceptors: obs?.serverInterceptors ?? [],
        onTunnel: (socket, peer) => orchestrator.fleet.tunnel(socket, peer.identity),
        log,
      });
    }
    if (consoleAt) {
      web = await serveConsole({
        listen: consoleAt,
        routes: orchestratorRoutes(orchestrator),
        interceptors: obs?.serverInterceptors ?? [],
        log,
        ...(material ? { material } : {}),
      });
    }
  } catch (e) {
    await tcp?.close();
    await server.close();
    await orchestrator.close();
    material?.close();
    throw e;
  }
  log.info("orchestrator serving", {
    socket: server.socketPath,
    listen: tcp ? `${tcp.host}:${tcp.port}` : undefined,
    console: web ? web.url.replace(/\?token=.*$/, "") : undefined,
    data_dir: config.storage.data_dir,
  });
  return {
    orchestrator,
    server,
    ...(tcp ? { tcp } : {}),
    listens: {
      ...(tcp ? { listen: hostPort(tcp) } : {}),
      ...(web ? { console: web.url } : {}),
    },
    stop: async () => {
      // Work first (a stopping Orchestrator schedules nothing and lets its tunnels go), then the
      // listeners, then the store.
      await orchestrator.stopWork();
      await web?.close();
      await tcp?.close();
      material?.close();
      await server.close();
      await orchestrator.close();
      await lock.release();
    },
  };
}

/** Starts the Broker (agent-to-agent messages) and serves it on broker.socket_path. */
export async function startBroker(
  config: Config,
  log: Logger,
  obs?: Observability,
): Promise<Running & { broker: BrokerServer }> {
  const lock = await lockService("broker", config.storage.data_dir);
  let server: BrokerServer;
  const listen = config.broker.listen;
  let material: TlsMaterial | undefined;
  try {
    // `up` serves the Broker with the Orchestrator's certificate (one tls.* per process).
    material = listen
      ? tlsMaterial(config, ["broker", "orchestrator"], `broker.listen (${listen})`, log)
      : undefined;
    server = await startBrokerServer({
      ...brokerOptions(config, log.child({ service: "broker" })),
      socketPath: config.broker.socket_path,
      tls: material ? { listen, material } : undefined,
      interceptors: obs?.serverInterceptors ?? [],
      log,
      registry: obs?.registry,
    });
  } catch (e) {
    material?.close();
    await lock.release();
    throw e;
  }
  log.info("broker serving", { socket: server.socketPath, data_dir: config.storage.data_dir });
  return {
    broker: server,
    ...(server.tcp ? { listens: { broker_listen: hostPort(server.tcp) } } : {}),
    stop: async () => {
      await server.close();
      material?.close();
      await lock.release();
    },
  };
}
