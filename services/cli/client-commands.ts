import { toJson } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { AgentSchema, AgentState } from "../../gen/conductor/v1/agent_pb.js";
import {
  GetStatsResponseSchema,
  OrchestratorService,
  TaskTypeSchema,
  type TaskTypeParameter,
} from "../../gen/conductor/v1/orchestrator_pb.js";
import {
  TaskEventSchema,
  TaskSchema,
  TaskState,
  type Task,
} from "../../gen/conductor/v1/task_pb.js";
import { unixTransport } from "../shared/unix-client.ts";
import { bool, list, str, UsageError, type ParsedCommand } from "./args.ts";
import { TaskGroupSchema } from "../../gen/conductor/v1/group_pb.js";
import { ago, count, duration, oneLine, stateName, table, usd } from "./format.ts";
import { int, taskSpecOf } from "./submit-spec.ts";

// What only some commands use is imported in their case: each costs every command's start.

type Orch = Client<typeof OrchestratorService>;

/** Where a client command writes, and what it reads besides the command line. */
export interface ClientIO {
  out: (line: string) => void;
  /** Writes text or bytes as they are (no newline added); resolves once written. */
  write: (data: string | Uint8Array) => Promise<void>;
  readStdin: () => string;
  /** The current folder: relative paths of submit, and the repository `apply` works in. */
  cwd: string;
  /** What `~` stands for in paths. */
  home: string;
}

const json = (v: unknown, pretty = false) => JSON.stringify(v, null, pretty ? 2 : undefined);
const taskJson = (t: Task, pretty = false) => json(toJson(TaskSchema, t), pretty);

/** Runs one client command against the Orchestrator at `socket`; returns the exit code. */
export async function runClientCommand(
  p: ParsedCommand,
  socket: string,
  io: ClientIO,
): Promise<number> {
  const client = createClient(OrchestratorService, unixTransport(socket));
  const name = p.command.name;
  const asJson = bool(p, "json");
  const out = io.out;
  const needId = () => {
    if (p.positionals.length !== 1 || !p.positionals[0])
      throw new UsageError(`usage: conductor ${name} <task-id> (one id; see "conductor tasks")`);
    return p.positionals[0];
  };
  switch (name) {
    case "submit": {
      if (str(p, "group") !== undefined) {
        const { groupOfSubmit, watchGroup } = await import("./groups.ts");
        const spec = groupOfSubmit(p, taskSpecOf(p, io));
        const { group: g } = await client.submitTaskGroup({ spec });
        out(asJson ? json(toJson(TaskGroupSchema, g!)) : g!.id);
        return bool(p, "wait") ? await watchGroup(client, g!.id, asJson, out) : 0;
      }
      const groupOnly = ["each", "max-parallel", "fail-fast", "reduce"].find(
        (f) => list(p, f).length > 0 || bool(p, f),
      );
      if (groupOnly)
        throw new UsageError(`--${groupOnly} makes a task group: give --group NAME as well`);
      const { task } = await client.submitTask({ spec: taskSpecOf(p, io) });
      if (!bool(p, "wait")) {
        out(asJson ? taskJson(task!) : task!.id);
        return 0;
      }
      if (!asJson) out(task!.id);
      return await follow(client, task!.id, asJson ? "final" : "text", out);
    }
    case "watch":
      return await follow(client, needId(), asJson ? "events" : "text", out);
    case "get": {
      const { task } = await client.getTask({ id: needId() });
      if (asJson) out(taskJson(task!, true));
      else (await import("./task-text.ts")).taskText(task!).forEach((l) => out(l));
      return 0;
    }
    case "output": {
      const eventSeq = BigInt(int(p, "event") ?? 0);
      if (eventSeq < 0n) throw new UsageError(`--event must be an event's seq (1 or more)`);
      const taskId = needId();
      for await (const piece of client.getTaskOutput({ taskId, eventSeq })) {
        await io.write(asJson ? json({ text: piece.text }) + "\n" : piece.text);
      }
      return 0;
    }
    case "diff": {
      const { diff } = await import("./diff.ts");
      return await diff(client, needId(), { stat: bool(p, "stat"), json: asJson }, io);
    }
    case "apply": {
      const [{ apply }, { localPath }] = await Promise.all([
        import("./apply.ts"),
        import("./workspace-flags.ts"),
      ]);
      const into = typeof p.values["into"] === "string" ? p.values["into"] : undefined;
      const target = into ? { ...io, cwd: localPath(into, io) } : io;
      return await apply(client, needId(), { threeWay: bool(p, "3way"), json: asJson }, target);
    }
    case "cancel": {
      const { task } = await client.cancelTask({ id: needId() });
      out(asJson ? taskJson(task!) : `${task!.id} ${stateName(task!.state)}`);
      return 0;
    }
    case "tasks":
      return await tasks(client, p, out);
    case "group":
      return await (await import("./groups.ts")).group(client, p, io.home, out);
    case "agents": {
      const { agents } = await client.listAgents({});
      if (asJson) agents.forEach((a) => out(json(toJson(AgentSchema, a))));
      else {
        const rows = agents.map((a) => [
          a.id,
          a.nodeId,
          (AgentState[a.state] ?? "").toLowerCase(),
          a.taskId || "-",
          count(a.tasksCompleted),
          a.workspace,
        ]);
        table(["AGENT", "NODE", "STATE", "TASK", "DONE", "WORKSPACE"], rows).forEach((l) => out(l));
      }
      return 0;
    }
    case "types":
      return await types(client, p.positionals, asJson, out);
    case "nodes":
      return await (await import("./nodes.ts")).nodes(client, p, asJson, out);
    case "stats": {
      const s = await client.getStats({});
      if (asJson) {
        out(json(toJson(GetStatsResponseSchema, s, { alwaysEmitImplicit: true }), true));
        return 0;
      }
      const byState = Object.entries(s.tasksByState)
        .map(([k, v]) => [k.replace(/^TASK_STATE_/, "").toLowerCase(), v] as const)
        .filter(([, v]) => v > 0n);
      const rows: [string, string][] = [
        ["tasks", byState.map(([k, v]) => `${k} ${count(v)}`).join(" · ") || "none yet"],
        ["agents", `${s.agentsBusy} busy · ${s.agentsIdle} idle`],
        [
          "run time",
          s.durationP50Ms > 0
            ? `p50 ${duration(s.durationP50Ms)} · p95 ${duration(s.durationP95Ms)} · p99 ${duration(s.durationP99Ms)}`
            : "-",
        ],
        ["tokens", `${count(s.inputTokensTotal)} in · ${count(s.outputTokensTotal)} out`],
        ["cost", usd(s.costUsdTotal)],
      ];
      rows.forEach(([k, v]) => out(`${k.padEnd(10)}${v}`));
      return 0;
    }
  }
  throw new UsageError(`unknown command ${name}`);
}

async function tasks(client: Orch, p: ParsedCommand, out: (l: string) => void): Promise<number> {
  const states = list(p, "state").map(parseState);
  const limitText = str(p, "limit");
  const limit = limitText === undefined ? 20 : Number(limitText);
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT)
    throw new UsageError(
      `--limit must be a whole number from 1 to ${MAX_LIMIT}, got "${oneLine(limitText ?? "", 40)}"`,
    );
  const asJson = bool(p, "json");
  const { tasks, more } = await listUpTo(client, states, limit, (page) => {
    if (asJson) page.forEach((t) => out(taskJson(t)));
  });
  if (asJson) return 0;
  if (tasks.length === 0) {
    out(states.length ? "no tasks in that state" : 'no tasks yet: conductor submit "<prompt>"');
    return 0;
  }
  const now = Date.now();
  const rows = tasks.map((t) => [
    t.id,
    stateName(t.state).toLowerCase(),
    String(t.spec?.priority ?? 0),
    t.agentId || "-",
    String(t.attempts),
    ago(t.createTime, now),
    oneLine(t.spec?.prompt ?? "", 50),
  ]);
  table(["ID", "STATE", "PRI", "AGENT", "TRIES", "CREATED", "PROMPT"], rows).forEach((l) => out(l));
  if (more) {
    out(
      limit < MAX_LIMIT
        ? `… more tasks: --limit ${Math.min(MAX_LIMIT, limit * 5)} shows more`
        : `… more tasks than ${MAX_LIMIT}: --state S shows those in one state`,
    );
  }
  return 0;
}

/** Most tasks `conductor tasks` lists. */
const MAX_LIMIT = 1000;

/**
 * Up to `limit` tasks, newest first, following ListTasks page tokens (a page stops at 2 MiB of
 * tasks, so one page may hold fewer than asked for); `onPage` sees each page as it arrives.
 * `more` says whether tasks remain past those returned.
 */
async function listUpTo(
  client: Orch,
  states: TaskState[],
  limit: number,
  onPage: (tasks: Task[]) => void,
): Promise<{ tasks: Task[]; more: boolean }> {
  const all: Task[] = [];
  let pageToken = "";
  // Every page holds at least one task, so this ends within `limit` pages.
  while (all.length < limit) {
    const page = await client.listTasks({ states, pageSize: limit - all.length, pageToken });
    all.push(...page.tasks);
    onPage(page.tasks);
    pageToken = page.nextPageToken;
    if (!pageToken || page.tasks.length === 0) return { tasks: all, more: false };
  }
  // A token only says there may be more: look.
  const next = await client.listTasks({ states, pageSize: 1, pageToken });
  return { tasks: all, more: next.tasks.length > 0 };
}

/**
 * Follows a task until it ends: "text" prints each event for a person, "events" one JSON
 * event per line, "final" only the ended task as JSON. Exit code 0 only if it SUCCEEDED.
 */
async function follow(
  client: Orch,
  id: string,
  mode: "text" | "events" | "final",
  out: (l: string) => void,
): Promise<number> {
  const { eventText } = await import("./task-text.ts");
  let final: TaskState | undefined;
  for await (const { event } of client.watchTask({ id })) {
    if (!event) continue;
    if (mode === "text") eventText(event).forEach((l) => out(l));
    if (mode === "events") out(json(toJson(TaskEventSchema, event)));
    if (event.kind.case === "stateChange" && event.kind.value.state >= TaskState.SUCCEEDED)
      final = event.kind.value.state;
  }
  if (mode === "final") out(taskJson((await client.getTask({ id })).task!));
  return final === TaskState.SUCCEEDED ? 0 : 1;
}

function parseState(s: string): TaskState {
  const name = s.toUpperCase().replace(/^TASK_STATE_/, "");
  const value = (TaskState as unknown as Record<string, number>)[name];
  if (value === undefined || value === 0)
    throw new UsageError(
      `unknown state "${oneLine(s, 40)}"; use queued, scheduled, running, succeeded, failed, cancelled or timed_out`,
    );
  return value;
}

/** `conductor types`: each task type, then its parameters one a line. */
async function types(
  client: Orch,
  names: string[],
  asJson: boolean,
  out: (line: string) => void,
): Promise<number> {
  if (names.length > 1) throw new UsageError("usage: conductor types [type]");
  const all = (await client.listTaskTypes({})).types;
  const types = names.length ? all.filter((t) => t.name === names[0]) : all;
  if (types.length === 0)
    throw new UsageError(
      `no task type ${oneLine(names[0]!, 64)}; the types are ${all.map((t) => t.name).join(", ")}`,
    );
  if (asJson) {
    types.forEach((t) => out(json(toJson(TaskTypeSchema, t))));
    return 0;
  }
  const rows = types.map((t) => [
    t.name,
    t.defaultTools.join(",") || "(agent's)",
    t.permissionMode || "(agent's)",
    t.resultSchema ? "structured" : "text",
    t.source,
  ]);
  const lines = table(["TYPE", "TOOLS", "PERMISSIONS", "ANSWER", "SOURCE"], rows);
  out(lines[0]!);
  types.forEach((t, i) => {
    out(lines[i + 1]!);
    if (t.description) out(`    ${t.description}`);
    for (const p of t.parameters) out(`    --param ${p.name}=${paramShape(p)}`);
  });
  return 0;
}

/** A parameter's kind and rule, as `types` shows it. */
function paramShape(p: TaskTypeParameter): string {
  const kind =
    p.kind === "enum" ? p.values.join("|") : p.kind === "list" ? "a,b,…" : p.kind.toUpperCase();
  const rule = p.required ? "required" : p.defaultValue ? `default ${p.defaultValue}` : "optional";
  return `${kind}  (${rule})${p.description ? `  ${p.description}` : ""}`;
}
