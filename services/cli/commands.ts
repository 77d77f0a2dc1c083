import type { Command, Flag } from "./args.ts";

const help: Flag = { type: "boolean", short: "h", help: "show this help" };
const json: Flag = {
  type: "boolean",
  help: "print JSON (the API's message mapping) instead of text",
};

/** Flags that say where the configuration and the sockets are; every command takes them. */
const where: Record<string, Flag> = {
  config: { type: "string", arg: "FILE", help: "YAML configuration file" },
  "socket-dir": {
    type: "string",
    arg: "DIR",
    help: "communication.socket_dir: folder of the sockets (default .conductor/run)",
  },
  socket: {
    type: "string",
    arg: "PATH",
    help: "communication.socket_path: the Orchestrator's socket (or CONDUCTOR_SOCKET)",
  },
  "data-dir": { type: "string", arg: "DIR", help: "storage.data_dir (default .conductor/data)" },
  help,
  json,
};

/** Flags of the services that run agents (`up`, `agent-host`). */
const agentFlags: Record<string, Flag> = {
  agents: {
    type: "string",
    arg: "N",
    help: "orchestrator.num_agents: agents to start (default 3)",
  },
  runtime: {
    type: "string",
    arg: "R",
    help: "runtime.backend: process (default), docker, podman, or a plugin module",
  },
};

/** Flags of every command that starts a service. */
const serving: Record<string, Flag> = {
  ...where,
  "log-level": {
    type: "string",
    arg: "L",
    help: "observability.log_level: debug, info, warn, error",
  },
  "log-format": {
    type: "string",
    arg: "F",
    help: "observability.log_format: text, json, or auto (text on a terminal; --json: json)",
  },
  "metrics-port": {
    type: "string",
    arg: "N",
    help: "this process's /metrics port (0 picks a free one, -1 turns it off)",
  },
};

const serviceDetails = `
Prints a ready line when it serves (JSON when stdout is not a terminal, or with --json) and
runs until SIGINT or SIGTERM. Every configuration key can also be set in a YAML file (--config)
or as CONDUCTOR_<SECTION>_<KEY>, e.g. CONDUCTOR_ORCHESTRATOR_NUM_AGENTS=5; see
"conductor config print". The agents need ANTHROPIC_API_KEY (and, for another Messages API,
ANTHROPIC_BASE_URL).`;

/** Every `conductor` command, in the order help lists them. */
export const COMMANDS: readonly Command[] = [
  {
    name: "up",
    args: "",
    summary: "Orchestrator, AgentHost and Broker in one process",
    details: serviceDetails,
    flags: { ...serving, ...agentFlags },
  },
  {
    name: "orchestrator",
    args: "",
    summary: "the Orchestrator alone (task store, scheduler)",
    details: serviceDetails,
    flags: serving,
  },
  {
    name: "agent-host",
    args: "",
    summary: "an AgentHost alone (the agents; serves <socket_dir>/agent-host.sock)",
    details: serviceDetails,
    flags: { ...serving, ...agentFlags },
  },
  {
    name: "broker",
    args: "",
    summary: "the Broker alone (agent-to-agent messages; <socket_dir>/broker.sock)",
    details: serviceDetails,
    flags: serving,
  },
  {
    name: "config",
    args: "print",
    summary: "print the effective configuration (defaults, file, environment, flags)",
    flags: where,
  },
  {
    name: "submit",
    args: '"<prompt>" | -f FILE | -',
    summary: "submit a task and print its id",
    details: `
The prompt is the argument, or the contents of FILE (-f FILE), or standard input ("-" or
-f -). A prompt that starts with "-" goes after "--": conductor submit -- "- fix foo.py".
With --wait, follows the task like "conductor watch" and exits 0 only if it succeeded.`,
    flags: {
      file: {
        type: "string",
        short: "f",
        arg: "FILE",
        help: 'read the prompt from FILE ("-": stdin)',
      },
      type: {
        type: "string",
        arg: "T",
        help: "generic (default), code_review, refactor, test_generation, analysis",
      },
      priority: { type: "string", short: "p", arg: "N", help: "0–10, higher first (default 0)" },
      timeout: {
        type: "string",
        arg: "S",
        help: "seconds one attempt may run (default: configured)",
      },
      "max-attempts": { type: "string", arg: "N", help: "attempts a failing task gets" },
      model: { type: "string", arg: "M", help: "the model the CLI uses, e.g. sonnet" },
      "max-turns": { type: "string", arg: "N", help: "most agentic turns (default: no limit)" },
      "allowed-tools": {
        type: "string",
        multiple: true,
        arg: "LIST",
        help: "tools allowed without asking, comma-separated, e.g. Read,Write,Bash",
      },
      "permission-mode": {
        type: "string",
        arg: "MODE",
        help: "default, acceptEdits, plan, bypassPermissions, dontAsk",
      },
      label: { type: "string", multiple: true, arg: "K=V", help: "a label, returned as given" },
      "idempotency-key": {
        type: "string",
        arg: "K",
        help: "a second submit with K returns the first task",
      },
      wait: { type: "boolean", short: "w", help: "follow the task until it ends" },
      ...where,
    },
  },
  {
    name: "watch",
    args: "<task-id>",
    summary: "follow a task live until it ends (exit 0 only if it succeeded)",
    flags: where,
  },
  {
    name: "get",
    args: "<task-id>",
    summary: "show one task: state, timing, result, tokens and cost",
    flags: where,
  },
  {
    name: "output",
    args: "<task-id>",
    summary: "print the whole of a result or output line that get/watch show cut short",
    details: `
A result text over 64 KiB, or an output line over 16 KiB, is cut in GetTask, WatchTask and
ListTasks (so every response fits a gRPC client's 4 MiB limit) and ends with a
"[… truncated by conductor …]" marker. This prints the whole, streamed: the result text by
default, or with --event SEQ the line of that event (SEQ as "watch --json" shows it).
With --json, the text comes as JSON lines {"text": "…"}: joined in order, they are the text.`,
    flags: {
      event: { type: "string", arg: "SEQ", help: "the output event's seq (default: the result)" },
      ...where,
      json: {
        type: "boolean",
        help: 'print JSON lines {"text": "…"}, pieces of the text in order',
      },
    },
  },
  {
    name: "tasks",
    args: "",
    summary: "list tasks, newest first",
    flags: {
      state: {
        type: "string",
        multiple: true,
        arg: "S",
        help: "only tasks in state S: queued, scheduled, running, succeeded, failed, cancelled, timed_out",
      },
      limit: { type: "string", short: "n", arg: "N", help: "show at most N tasks (default 20)" },
      ...where,
    },
  },
  { name: "agents", args: "", summary: "list the agents and what they run", flags: where },
  { name: "cancel", args: "<task-id>", summary: "cancel a task", flags: where },
  {
    name: "stats",
    args: "",
    summary: "tasks by state, run-time percentiles, tokens and cost",
    flags: where,
  },
  { name: "help", args: "[command]", summary: "show help", flags: { help, json } },
];

/** The commands that talk to a running Orchestrator. */
export const CLIENT_COMMANDS = new Set([
  "submit",
  "watch",
  "get",
  "output",
  "tasks",
  "agents",
  "cancel",
  "stats",
]);

/** The commands that start services. */
export const SERVICE_COMMANDS = new Set(["up", "orchestrator", "agent-host", "broker"]);

/** The key of the /metrics port of the process a command starts (`up` serves all on one). */
export function metricsPortKey(
  command: string,
):
  | "observability.metrics_port"
  | "observability.agent_host_metrics_port"
  | "observability.broker_metrics_port" {
  if (command === "agent-host") return "observability.agent_host_metrics_port";
  if (command === "broker") return "observability.broker_metrics_port";
  return "observability.metrics_port";
}
