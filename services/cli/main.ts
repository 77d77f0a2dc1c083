import { parseArgs } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import { ConfigError, loadConfig, type Config } from "../shared/config.ts";
import { createLogger } from "../shared/log.ts";
import { privateDataDir } from "../shared/private.ts";
import { runClientCommand, CLIENT_COMMANDS } from "./client-commands.ts";
import { startObservability } from "./observe.ts";
import {
  agentHostSocket,
  startAgentHost,
  startBroker,
  startOrchestrator,
  type Running,
} from "./services.ts";

const USAGE = `conductor — run many Claude Code agents in parallel behind a durable gRPC task queue

Services:
  conductor up             Orchestrator + AgentHost + Broker in one process
  conductor orchestrator   the Orchestrator alone
  conductor agent-host     an AgentHost alone
  conductor broker         the Broker alone (agent-to-agent messages; <socket_dir>/broker.sock)
  conductor config print   the effective configuration

Tasks (talk to the Orchestrator's socket):
  conductor submit "<prompt>" [--priority N] [--timeout S] [--type T] [--max-attempts N]
                              [--model M] [--idempotency-key K] [--wait] [--json]
  conductor watch <id>        live progress until the task ends
  conductor get <id>          one task, as JSON
  conductor tasks [--state S] tasks, newest first
  conductor agents            agents and what they run
  conductor cancel <id>
  conductor stats

Common flags:
  --config FILE     YAML configuration (sections orchestrator, agent, communication, runtime, storage, broker, observability)
  --agents N        orchestrator.num_agents
  --socket-dir DIR  communication.socket_dir
  --socket PATH     communication.socket_path (the Orchestrator's socket)
  --data-dir DIR    storage.data_dir
  --log-level L     observability.log_level
  --metrics-port N  this process's /metrics port: observability.metrics_port, or
                    agent_host_metrics_port / broker_metrics_port; 0 picks a free one, -1 none
  --runtime R       runtime.backend: process (default), docker, podman, or a plugin module
Every key can also be set as CONDUCTOR_<SECTION>_<KEY>, e.g. CONDUCTOR_ORCHESTRATOR_NUM_AGENTS=5.
`;

const OPTIONS = {
  config: { type: "string" },
  agents: { type: "string" },
  "socket-dir": { type: "string" },
  socket: { type: "string" },
  "data-dir": { type: "string" },
  "log-level": { type: "string" },
  runtime: { type: "string" },
  "metrics-port": { type: "string" },
  priority: { type: "string" },
  timeout: { type: "string" },
  type: { type: "string" },
  "max-attempts": { type: "string" },
  model: { type: "string" },
  "idempotency-key": { type: "string" },
  state: { type: "string", multiple: true },
  wait: { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** Parsed command line: the command, its positionals and its flags. */
export type Parsed = ReturnType<
  typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>
>;

/** Entry point of the `conductor` command; returns the exit code. */
export async function main(
  argv: string[],
  env: Record<string, string | undefined>,
): Promise<number> {
  let parsed: Parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true });
  } catch (e) {
    process.stderr.write(`conductor: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const [command, ...rest] = parsed.positionals;
  if (!command || parsed.values.help) {
    process.stdout.write(USAGE);
    return command || parsed.values.help ? 0 : 2;
  }
  let config: Config;
  try {
    config = loadConfig({ file: parsed.values.config, env, flags: flagsOf(parsed) });
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`conductor: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  try {
    if (command === "config" && rest[0] === "print") {
      process.stdout.write(JSON.stringify(redact(config), null, 2) + "\n");
      return 0;
    }
    if (
      command === "up" ||
      command === "orchestrator" ||
      command === "agent-host" ||
      command === "broker"
    ) {
      return await serve(command, config, env);
    }
    if (CLIENT_COMMANDS.has(command)) return await runClientCommand(command, rest, parsed, config);
  } catch (e) {
    const message = e instanceof ConnectError ? e.rawMessage : (e as Error).message;
    const code = e instanceof ConnectError ? ` [${codeName(e)}]` : "";
    process.stderr.write(`conductor ${command}: ${message}${code}\n`);
    return 1;
  }
  process.stderr.write(`conductor: unknown command "${command}"\n\n${USAGE}`);
  return 2;
}

function codeName(e: ConnectError): string {
  return Code[e.code];
}

/** Which port --metrics-port sets, by command (the Orchestrator's, and `up`'s, by default). */
const METRICS_PORT_KEYS: Record<string, string> = {
  "agent-host": "observability.agent_host_metrics_port",
  broker: "observability.broker_metrics_port",
};

function flagsOf(parsed: Parsed): Record<string, unknown> {
  const v = parsed.values;
  const num = (s: string | undefined, key: string) => {
    if (s === undefined) return undefined;
    const n = Number(s);
    if (!Number.isFinite(n))
      throw new ConfigError(`configuration key "${key}": expected a number, got "${s}"`);
    return n;
  };
  return {
    "orchestrator.num_agents": num(v.agents, "orchestrator.num_agents"),
    "communication.socket_dir": v["socket-dir"],
    "communication.socket_path": v.socket,
    "storage.data_dir": v["data-dir"],
    "observability.log_level": v["log-level"],
    "runtime.backend": v.runtime,
    [METRICS_PORT_KEYS[parsed.positionals[0] ?? ""] ?? "observability.metrics_port"]: num(
      v["metrics-port"],
      "observability.metrics_port",
    ),
  };
}

function redact(config: Config): Config {
  const copy = structuredClone(config);
  if (copy.agent.anthropic_api_key) copy.agent.anthropic_api_key = "(set)";
  return copy;
}

/** Runs the services named by `command` until SIGINT/SIGTERM. */
async function serve(
  command: string,
  config: Config,
  env: Record<string, string | undefined>,
): Promise<number> {
  const log = createLogger(config.observability.log_level, { node: config.orchestrator.node_id });
  // Everything a service writes (databases, keys, sockets, logs) is its user's alone; what
  // agents must read is made readable explicitly (services/shared/agent-files.ts).
  process.umask(0o077);
  privateDataDir(config.storage.data_dir);
  const observability = await startObservability(command, config, env, log);
  const { obs } = observability;
  const running: Running[] = [];
  // The Broker first, so the AgentHost can register its agents with it.
  if (command === "up" || command === "broker") running.push(await startBroker(config, log, obs));
  if (command === "up" || command === "agent-host")
    running.push(await startAgentHost(config, log, env["PATH"] ?? "/usr/bin:/bin", obs));
  if (command === "up" || command === "orchestrator")
    running.push(await startOrchestrator(config, log, obs));
  process.stdout.write(
    JSON.stringify({
      ready: command,
      // The socket this process serves (`up`: the Orchestrator's, the one clients use).
      socket:
        command === "agent-host"
          ? agentHostSocket(config)
          : command === "broker"
            ? config.broker.socket_path
            : config.communication.socket_path,
      socket_dir: config.communication.socket_dir,
      broker_socket: config.broker.socket_path,
      metrics: observability.metricsUrl ?? null,
    }) + "\n",
  );
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  log.info("shutting down");
  // The Orchestrator first, so runs end as interrupted rather than failed.
  for (const r of running.reverse()) await r.stop();
  await observability.stop();
  return 0;
}
