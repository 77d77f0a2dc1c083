import path from "node:path";
import { format as formatArgs } from "node:util";
import type { Config } from "../shared/config.ts";
import { createLogger, type Logger } from "../shared/log.ts";
import { privateDataDir } from "../shared/private.ts";
import { conductorCommand } from "./locate.ts";
import { startObservability } from "./observe.ts";
import {
  agentHostSocket,
  startAgentHost,
  startBroker,
  startOrchestrator,
  type Running,
} from "./services.ts";
import { textLogWriter } from "./text-log.ts";

/** What a serving command prints to, and whether a person watches it. */
export interface ServeIO {
  env: Record<string, string | undefined>;
  stdout: { write(s: string): unknown; isTTY?: boolean };
  stderr: { write(s: string): unknown; isTTY?: boolean };
  /** --json: JSON logs and ready line whatever the terminal. */
  json: boolean;
}

/** Runs the services named by `command` until SIGINT/SIGTERM. */
export async function serve(command: string, config: Config, io: ServeIO): Promise<number> {
  const format = config.observability.log_format;
  const text = !io.json && (format === "text" || (format === "auto" && io.stderr.isTTY === true));
  const write = (s: string) => void io.stderr.write(s);
  const log = createLogger(
    config.observability.log_level,
    { node: config.orchestrator.node_id },
    text ? textLogWriter(write) : write,
  );
  const restoreOutput = captureStrayOutput(log);
  try {
    return await serveLogged(command, config, io, log, format);
  } finally {
    restoreOutput();
  }
}

/**
 * What libraries print on their own (console.error and console.warn: connect-node's word on a
 * handler whose write a reset cancelled, with its stack; Node's process warnings) goes into the
 * service's log, one line at warn each, instead of as free text, often many lines, amid the
 * JSON lines a log shipper reads one at a time. Returns the undo.
 */
export function captureStrayOutput(log: Logger): () => void {
  const saved = { error: console.error, warn: console.warn };
  const warnings = process.listeners("warning");
  const toLog = (...args: unknown[]) => log.warn("library output", { text: formatArgs(...args) });
  const onWarning = (w: Error) => log.warn("process warning", { warning: w.name, text: w.message });
  console.error = toLog;
  console.warn = toLog;
  // Node's own printer is one of these listeners: without it, warnings go to the log alone.
  process.removeAllListeners("warning");
  process.on("warning", onWarning);
  return () => {
    console.error = saved.error;
    console.warn = saved.warn;
    process.off("warning", onWarning);
    for (const l of warnings) process.on("warning", l);
  };
}

async function serveLogged(
  command: string,
  config: Config,
  io: ServeIO,
  log: Logger,
  format: string,
): Promise<number> {
  // Everything a service writes (databases, keys, sockets, logs) is its user's alone; what
  // agents must read is made readable explicitly (services/shared/agent-files.ts).
  process.umask(0o077);
  privateDataDir(config.storage.data_dir);
  const runsAgents = command === "up" || command === "agent-host";
  if (runsAgents) warnNoApiKey(config, log, io);
  const observability = await startObservability(command, config, io.env, log);
  const { obs } = observability;
  const running: Running[] = [];
  try {
    // The Broker first, so the AgentHost can register its agents with it.
    if (command === "up" || command === "broker") running.push(await startBroker(config, log, obs));
    if (runsAgents)
      running.push(await startAgentHost(config, log, io.env["PATH"] ?? "/usr/bin:/bin", obs));
    if (command === "up" || command === "orchestrator")
      running.push(await startOrchestrator(config, log, obs, command === "up"));
  } catch (e) {
    for (const r of running.reverse()) await r.stop().catch(() => undefined);
    await observability.stop();
    throw e;
  }
  const ready = {
    ...readyLine(command, config, observability.metricsUrl),
    ...Object.assign({}, ...running.map((r) => r.listens ?? {})),
  } as Record<string, unknown>;

  // Listening for the signals before saying it is ready: a Ctrl-C right after is a stop.
  const stop = new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  const human = !io.json && format !== "json" && io.stdout.isTTY === true;
  io.stdout.write(human ? readyText(command, config, ready) : JSON.stringify(ready) + "\n");
  await stop;
  log.info("shutting down");
  // A second signal (Ctrl-C twice) stops at once, saying so: what the clean stop had not
  // ended or removed yet is the next start's (it re-adopts or removes the agents' sandboxes).
  const now = (signal: NodeJS.Signals) => {
    log.warn(
      "a second signal: stopping at once, before the clean stop is done (the next start on this data folder takes up what is left)",
      { signal },
    );
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", now);
  process.once("SIGTERM", now);
  // The Orchestrator first, so runs end as interrupted rather than failed.
  for (const r of running.reverse()) await r.stop();
  await observability.stop();
  return 0;
}

/**
 * The ready line: `socket` is the socket of the service the command runs (up: the
 * Orchestrator's, which clients use), and `up` names every socket it serves.
 */
export function readyLine(
  command: string,
  config: Config,
  metricsUrl: string | undefined,
): Record<string, unknown> {
  const own: Record<string, string> = {
    up: config.communication.socket_path,
    orchestrator: config.communication.socket_path,
    "agent-host": agentHostSocket(config),
    broker: config.broker.socket_path,
  };
  return {
    ready: command,
    socket: own[command],
    socket_dir: config.communication.socket_dir,
    ...(command === "up"
      ? { agent_host_socket: agentHostSocket(config), broker_socket: config.broker.socket_path }
      : {}),
    metrics: metricsUrl ?? null,
  };
}

/** The ready banner a person sees on a terminal. */
export function readyText(command: string, config: Config, ready: Record<string, unknown>): string {
  const n = config.orchestrator.num_agents;
  const agents = `${n} agent${n === 1 ? "" : "s"}, ${config.runtime.backend} runtime`;
  const what: Record<string, string> = {
    up: `Conductor is up: Orchestrator, AgentHost (${agents}) and Broker`,
    orchestrator: "The Orchestrator is serving",
    "agent-host": `The AgentHost is serving (${agents})`,
    broker: "The Broker is serving",
  };
  const rows: [string, unknown][] = [
    ["socket", ready["socket"]],
    ["listen", ready["listen"]],
    ["broker tcp", ready["broker_listen"]],
    ["agent host", ready["agent_host_socket"]],
    ["broker", ready["broker_socket"]],
    ["metrics", ready["metrics"]],
    ["console", ready["console"]],
    ["data", config.storage.data_dir],
  ];
  const lines = rows.filter(([, v]) => v).map(([k, v]) => `  ${k.padEnd(11)}${String(v)}`);
  const socket = config.communication.socket_path;
  const home = path.dirname(path.dirname(socket));
  const found =
    socket.endsWith(path.join(".conductor", "run", "orchestrator.sock")) &&
    `from ${path.dirname(home)} or a folder below it`;
  const hint =
    command === "up" || command === "orchestrator"
      ? `\nSubmit a task ${found || `with CONDUCTOR_SOCKET=${socket}`}: ${conductorCommand()} submit "Say hello" --wait\n`
      : "";
  return `${what[command]}.\n${lines.join("\n")}\n${hint}Stop with Ctrl-C.\n`;
}

/**
 * Without an API key every run fails with the CLI's own "Not logged in · Please run /login":
 * say at start, in Conductor's words, what to set.
 */
function warnNoApiKey(config: Config, log: Logger, io: ServeIO): void {
  if (config.agent.anthropic_api_key) return;
  const what =
    'no Anthropic API key is set, so every task will fail (the Claude Code CLI answers "Not logged in")';
  log.warn(what, { key: "agent.anthropic_api_key" });
  io.stderr.write(
    `conductor: WARNING: ${what}.\n` +
      `  Set ANTHROPIC_API_KEY (or agent.anthropic_api_key in the --config file) and start again,\n` +
      `  e.g. ANTHROPIC_API_KEY=sk-ant-… ${conductorCommand()} up\n` +
      `  (ANTHROPIC_BASE_URL names another Messages API).\n`,
  );
}
