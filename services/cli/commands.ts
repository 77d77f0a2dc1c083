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

/** Also listen on TCP with mutual TLS. */
const listen: Flag = {
  type: "string",
  arg: "HOST:PORT",
  help: "communication.listen: also serve TCP with mutual TLS (tls.*), e.g. 0.0.0.0:7443",
};

/** Where the Orchestrator serves its web console. */
const consoleFlag: Flag = {
  type: "string",
  arg: "HOST:PORT",
  help: "observability.console: the web console (default 127.0.0.1:8470; port 0 picks a free one, -1 turns it off)",
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
    flags: { ...serving, ...agentFlags, listen, console: consoleFlag },
  },
  {
    name: "orchestrator",
    args: "",
    summary: "the Orchestrator alone (task store, scheduler)",
    details: serviceDetails,
    flags: { ...serving, listen, console: consoleFlag },
  },
  {
    name: "agent-host",
    args: "",
    summary: "an AgentHost alone (the agents; serves <socket_dir>/agent-host.sock)",
    details: `${serviceDetails}

With --join HOST:PORT (agent_host.join) it joins the Orchestrator listening there over TCP with
mutual TLS (tls.ca_file, tls.cert_file, tls.key_file: an agent-host certificate from
"conductor certs issue"), dialling out: the node needs no inbound port. Its name is its
certificate's; agent_host.labels, agent_host.cpus and agent_host.memory say what it offers.`,
    flags: {
      ...serving,
      ...agentFlags,
      join: {
        type: "string",
        arg: "HOST:PORT",
        help: "agent_host.join: the Orchestrator's TCP listener to join (mutual TLS)",
      },
    },
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
With --wait, follows the task like "conductor watch" and exits 0 only if it succeeded.

Where the agent works (default: a scratch folder of its own):
  --repo REPO   a git repository: each attempt works in a worktree of its own, starting at
                --ref (default REPO's HEAD), and what it changed is committed on --branch
                (default conductor/<task id>), however the attempt ends; --push pushes that
                branch to REPO. "conductor diff" shows the change, "conductor apply" puts its
                commits on your branch. REPO is a path here (relative paths and ~ are made
                absolute; it is read on the AgentHost's machine) or a URL that machine can
                fetch: file://, git://, ssh://, https://, or host:path.
  --path DIR    a host folder, worked in as it is (no copy, no commit); it must be under one
                of the AgentHost's agent.allowed_host_paths. --read-only mounts it read-only,
                e.g. for a review.

Checks: each --check CMD runs with "sh -c" in the workspace after the agent succeeds, in the
order given; the first that fails fails the attempt (retried like any failure). --check-timeout
is the time limit of each (default agent.check_timeout_seconds).

A FILE ending in .yaml, .yml or .json is a whole task spec instead of a prompt: TaskSpec
fields by their proto names, a check as a command or {command, timeout_seconds}, paths
relative to the file's folder; flags and a prompt argument override what it says:
  prompt: Add input validation to the signup form
  priority: 5
  workspace: { git: { repository: ~/src/app, ref: main, branch: signup-validation } }
  checks: ["npm test", { command: npm run e2e, timeout_seconds: 900 }]

Examples:
  conductor submit --repo ~/src/app --check "npm test" "Add input validation to the signup form"
  conductor submit --repo git@github.com:acme/app.git --ref release-2 --branch fix-42 --push \\
    "Fix issue 42"
  conductor submit --path ~/src/app --read-only --type code_review "Review the error handling"
  conductor submit --type code_review --param focus=security --param paths=src/auth,src/api \\
    --path ~/src/app "Review the login flow"
  conductor submit -f task.yaml --priority 9`,
    flags: {
      file: {
        type: "string",
        short: "f",
        arg: "FILE",
        help: 'read the prompt from FILE ("-": stdin); FILE.yaml/.yml/.json: a whole task spec',
      },
      type: {
        type: "string",
        arg: "T",
        help: 'the task type: generic (default), code_review, refactor, test_generation, analysis, or a configured one ("conductor types")',
      },
      param: {
        type: "string",
        multiple: true,
        arg: "K=V",
        help: "a parameter of the task type (a list: comma-separated); repeat for more",
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
      "node-selector": {
        type: "string",
        multiple: true,
        arg: "K=V",
        help: "run only on a node labelled K=V (agent_host.labels); repeat for more",
      },
      "depends-on": {
        type: "string",
        multiple: true,
        arg: "ID",
        help: "run only after task ID succeeded ({{deps.ID.result}} in the prompt is its result); repeat for more",
      },
      budget: {
        type: "string",
        arg: "USD",
        help: "most US dollars the task may spend on the model (budget.max_usd), e.g. 0.50",
      },
      cpus: { type: "string", arg: "N", help: "CPUs the task needs of its node (resources)" },
      memory: {
        type: "string",
        arg: "SIZE",
        help: "memory the task needs of its node, e.g. 4g (resources)",
      },
      "idempotency-key": {
        type: "string",
        arg: "K",
        help: "a second submit with K returns the first task",
      },
      repo: {
        type: "string",
        arg: "REPO",
        help: "work on a git repository (a path, or a URL); the change comes back as a branch",
      },
      ref: {
        type: "string",
        arg: "REF",
        help: "with --repo: branch, tag or commit to start from (default: REPO's HEAD)",
      },
      branch: {
        type: "string",
        arg: "B",
        help: "with --repo: the branch the change is committed on (default conductor/<id>)",
      },
      push: { type: "boolean", help: "with --repo: push the branch to REPO after each attempt" },
      path: {
        type: "string",
        arg: "DIR",
        help: "work in the host folder DIR as it is (not with --repo)",
      },
      "read-only": { type: "boolean", help: "with --path: mount DIR read-only" },
      check: {
        type: "string",
        multiple: true,
        arg: "CMD",
        help: 'a command that must pass after the agent, e.g. "npm test"; run in order',
      },
      "check-timeout": {
        type: "string",
        arg: "S",
        help: "seconds each --check may run (default agent.check_timeout_seconds)",
      },
      wait: { type: "boolean", short: "w", help: "follow the task until it ends" },
      group: {
        type: "string",
        arg: "NAME",
        help: "submit a task group named NAME instead: the task is the template of --each",
      },
      each: {
        type: "string",
        multiple: true,
        arg: "P=V1,V2",
        help: "with --group: one member per value of P ({{P}} in the prompt); repeat for more",
      },
      "max-parallel": { type: "string", arg: "N", help: "with --group: most members at once" },
      "fail-fast": { type: "boolean", help: "with --group: the first failure cancels the rest" },
      reduce: {
        type: "string",
        arg: "PROMPT",
        help: "with --group: a last task given every member's outcome ({{members}})",
      },
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
    name: "diff",
    args: "<task-id>",
    summary: "print the patch of a task's change (its git workspace's branch)",
    details: `
A task submitted with --repo works on a branch of its own; this prints its commits from the
task's base to the branch's head as "git format-patch" does (mail-formatted, one commit after
another, as "git am" takes them), streamed as it comes: save it with
"conductor diff <id> > task.patch", or read it with "conductor diff <id> | less".
--stat prints a summary instead, as "git diff --stat" does: a line per file, the totals, the
branch and base..head. --json prints the change (files, counts, branch, commits) as JSON.
A task with no git workspace, or none of whose attempts has ended yet, has no change: exit 1.`,
    flags: {
      stat: { type: "boolean", help: "a summary: files, lines added and deleted, the branch" },
      ...where,
      json: { type: "boolean", help: "print the change (WorkspaceChange) as JSON" },
    },
  },
  {
    name: "apply",
    args: "<task-id>",
    summary: "apply a task's commits to the git repository here (git am)",
    details: `
Applies the commits of a task's change (see "conductor diff") onto the current branch of the
git repository of the current folder with "git am", keeping their messages and authors, and
says how many it applied and what they changed. The repository has to be ready: no
uncommitted changes to tracked files (commit or "git stash" them), no am or rebase in
progress. When a commit does not apply, "git am --abort" puts the repository back as it was,
and it exits 1 saying what did not apply; --3way then merges where the files differ from the
task's base (as "git am --3way", which needs the base commit in this repository).
If the task pushed its branch (--push), "git fetch" and "git merge" of that branch do the same.
-C DIR applies to the repository in DIR instead, as "git -C DIR" would: run from where
Conductor is, e.g. conductor apply <task-id> -C ~/src/app.`,
    flags: {
      "3way": {
        type: "boolean",
        help: "merge where the files differ from the task's base (git am --3way)",
      },
      into: {
        type: "string",
        short: "C",
        arg: "DIR",
        help: "apply to the repository in DIR (default: the current folder)",
      },
      ...where,
      json: {
        type: "boolean",
        help: "print what it applied as JSON: task, branch, from, to, commits, files, insertions, deletions",
      },
    },
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
  {
    name: "types",
    args: "[type]",
    summary: "list the task types (built-in and configured) and their parameters",
    details: `
Lists every task type the Orchestrator knows: the built-ins and those of
orchestrator.task_types, each with its parameters (kind, required or default, enum values),
default tools and permission mode, and whether it answers with a structured result (a result
schema; --json prints it). Give a type with "submit --type T" and its parameters with
"--param K=V".`,
    flags: where,
  },
  {
    name: "nodes",
    args: "[drain|undrain <name>]",
    summary: "list the nodes (capacity, use, labels, lease); drain or undrain one",
    details: `
Lists every node: those joined over TCP (agent-host --join) and local ones (Unix sockets),
with their state (ready, draining, lost), agents, CPUs and memory offered and asked for by
running tasks, labels and, for joined nodes, when the lease lapses unless renewed.
"nodes drain NAME" stops giving NAME new tasks (its running ones finish); "nodes undrain
NAME" lets it take tasks again. Draining is kept across Orchestrator restarts.`,
    flags: where,
  },
  { name: "cancel", args: "<task-id>", summary: "cancel a task", flags: where },
  {
    name: "group",
    args: "submit -f FILE | get <id> | watch <id> | cancel <id> | list",
    summary: "submit, follow and cancel task groups (campaigns of many tasks)",
    details: `
A group is many tasks submitted, bounded, watched and ended as one: a list of members, or a
template whose {{PARAM}}s a matrix fills (one member per combination of values), at most
max_parallel running at once, fail_fast cutting the rest at the first failure, a budget for
the whole, and an optional reduce step given every member's outcome ({{members}}) whose
result is the group's. "group submit -f FILE" reads the group from YAML or JSON, e.g.

  name: review-campaign
  max_parallel: 3
  template:
    prompt: Review the error handling of {{service}}
    workspace: { git: { repository: "/srv/git/{{service}}.git" } }
  matrix: { service: [billing, search, auth] }
  reduce: { prompt: "Rank these reviews by severity: {{members}}" }

Members may be listed instead, each its name beside its task spec's fields, and may name
other members in depends_on. "group watch" follows it until it ends (exit 0 only if it
SUCCEEDED); "submit --group NAME --each PARAM=V1,V2" is the same for one command line.`,
    flags: {
      file: { type: "string", short: "f", arg: "FILE", help: "with submit: the group (YAML/JSON)" },
      wait: { type: "boolean", short: "w", help: "with submit: follow the group until it ends" },
      ...where,
    },
  },
  {
    name: "stats",
    args: "",
    summary: "tasks by state, run-time percentiles, tokens and cost",
    flags: where,
  },
  {
    name: "certs",
    args: "init | issue",
    summary: "make the cluster's CA and the certificates of its services and clients (mTLS)",
    details: `
"certs init" makes the cluster's CA in DIR: ca.crt, which every service and client trusts, and
ca.key, which signs their certificates (keep it secret; it is 0600). It refuses a DIR that has
a CA already. "certs issue" makes NAME.key and NAME.crt in DIR, signed by that CA, naming the
holder spiffe://conductor/ROLE/NAME; give a service every --dns name and --ip address it is
reached at. Issuing an existing NAME again replaces its files atomically: that is how a
certificate is rotated, and a running service picks the new one up without a restart.
Keys are made by the system's openssl (3.0 or later): EC P-256, files 0600; DIR is made 0700.

Examples:
  conductor certs init --dir /etc/conductor/tls
  conductor certs issue --dir /etc/conductor/tls --name orch-1 --role orchestrator \\
    --dns orch-1.internal --ip 10.0.0.5
  conductor certs issue --dir /etc/conductor/tls --name alice --role client --days 30`,
    flags: {
      dir: {
        type: "string",
        arg: "DIR",
        help: "the folder of the CA and the certificates (made 0700 when missing)",
      },
      name: {
        type: "string",
        arg: "NAME",
        help: 'issue: whose certificate: 1–63 letters, digits, ".", "_", "-"',
      },
      role: {
        type: "string",
        arg: "ROLE",
        help: "issue: orchestrator, agent-host, broker or client",
      },
      dns: {
        type: "string",
        multiple: true,
        arg: "NAME",
        help: "issue: a DNS name the holder is reached at",
      },
      ip: {
        type: "string",
        multiple: true,
        arg: "ADDR",
        help: "issue: an IP address the holder is reached at",
      },
      days: {
        type: "string",
        arg: "N",
        help: "days it is valid (init: default 3650; issue: default 365)",
      },
      help,
      json: {
        type: "boolean",
        help: "print what it wrote as JSON (paths, identity, notAfter, fingerprint)",
      },
    },
  },
  { name: "help", args: "[command]", summary: "show help", flags: { help, json } },
];

/** The commands that talk to a running Orchestrator. */
export const CLIENT_COMMANDS = new Set([
  "submit",
  "watch",
  "get",
  "diff",
  "apply",
  "output",
  "tasks",
  "agents",
  "types",
  "nodes",
  "cancel",
  "stats",
  "group",
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
