import { create, toJson } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { AgentState } from "../../gen/conductor/v1/agent_pb.js";
import {
  GetStatsResponseSchema,
  OrchestratorService,
} from "../../gen/conductor/v1/orchestrator_pb.js";
import {
  TaskSchema,
  TaskSpecSchema,
  TaskState,
  type Task,
  type TaskEvent,
} from "../../gen/conductor/v1/task_pb.js";
import type { Config } from "../shared/config.ts";
import { unixTransport } from "../shared/transport.ts";
import type { Parsed } from "./main.ts";

/** The commands that talk to a running Orchestrator. */
export const CLIENT_COMMANDS = new Set([
  "submit",
  "watch",
  "get",
  "tasks",
  "agents",
  "cancel",
  "stats",
]);

type Orch = Client<typeof OrchestratorService>;

const out = (s: string) => void process.stdout.write(s + "\n");
const stateName = (s: TaskState) => TaskState[s];
const taskJson = (t: Task) => JSON.stringify(toJson(TaskSchema, t));

/** Runs one client command against the Orchestrator's socket; returns the exit code. */
export async function runClientCommand(
  command: string,
  args: string[],
  parsed: Parsed,
  config: Config,
): Promise<number> {
  const client = createClient(OrchestratorService, unixTransport(config.communication.socket_path));
  const v = parsed.values;
  const needId = () => {
    if (!args[0]) throw new Error(`usage: conductor ${command} <task-id>`);
    return args[0];
  };
  switch (command) {
    case "submit": {
      if (args.length !== 1) throw new Error('usage: conductor submit "<prompt>" [flags]');
      const spec = create(TaskSpecSchema, {
        prompt: args[0]!,
        type: v.type ?? "",
        priority: int(v.priority, "--priority"),
        timeoutSeconds: int(v.timeout, "--timeout"),
        maxAttempts: int(v["max-attempts"], "--max-attempts"),
        model: v.model ?? "",
        idempotencyKey: v["idempotency-key"] ?? "",
      });
      const { task } = await client.submitTask({ spec });
      if (!v.wait) {
        out(v.json ? taskJson(task!) : task!.id);
        return 0;
      }
      if (!v.json) out(task!.id);
      return await follow(client, task!.id, !v.json, v.json === true);
    }
    case "watch":
      return await follow(client, needId(), true, v.json === true);
    case "get": {
      const { task } = await client.getTask({ id: needId() });
      out(JSON.stringify(toJson(TaskSchema, task!), null, 2));
      return 0;
    }
    case "cancel": {
      const { task } = await client.cancelTask({ id: needId() });
      out(v.json ? taskJson(task!) : `${task!.id} ${stateName(task!.state)}`);
      return 0;
    }
    case "tasks": {
      const states = (v.state ?? []).map(parseState);
      const { tasks } = await client.listTasks({ states });
      if (v.json) tasks.forEach((t) => out(taskJson(t)));
      else {
        out(pad(["ID", "STATE", "PRI", "AGENT", "ATTEMPTS", "PROMPT"]));
        for (const t of tasks) {
          const prompt = (t.spec?.prompt ?? "").replace(/\s+/g, " ").slice(0, 40);
          out(
            pad([
              t.id,
              stateName(t.state),
              String(t.spec?.priority ?? 0),
              t.agentId || "-",
              String(t.attempts),
              prompt,
            ]),
          );
        }
      }
      return 0;
    }
    case "agents": {
      const { agents } = await client.listAgents({});
      out(pad(["ID", "NODE", "STATE", "TASK", "DONE", "WORKSPACE"]));
      for (const a of agents) {
        out(
          pad([
            a.id,
            a.nodeId,
            AgentState[a.state],
            a.taskId || "-",
            String(a.tasksCompleted),
            a.workspace,
          ]),
        );
      }
      return 0;
    }
    case "stats": {
      const stats = await client.getStats({});
      out(
        JSON.stringify(
          toJson(GetStatsResponseSchema, stats, { alwaysEmitImplicit: true }),
          null,
          2,
        ),
      );
      return 0;
    }
  }
  throw new Error(`unknown command ${command}`);
}

/** Prints a task's events until it ends; exit code 0 only if it SUCCEEDED. */
async function follow(client: Orch, id: string, human: boolean, json: boolean): Promise<number> {
  let final: TaskState | undefined;
  for await (const { event } of client.watchTask({ id })) {
    if (!event) continue;
    if (human) printEvent(event);
    if (event.kind.case === "stateChange" && event.kind.value.state >= TaskState.SUCCEEDED)
      final = event.kind.value.state;
  }
  if (json) {
    const { task } = await client.getTask({ id });
    out(taskJson(task!));
  }
  return final === TaskState.SUCCEEDED ? 0 : 1;
}

function printEvent(e: TaskEvent): void {
  const k = e.kind;
  if (k.case === "stateChange") {
    const v = k.value;
    out(
      `[${stateName(v.state)}]${v.agentId ? ` agent=${v.agentId}` : ""}${v.attempt ? ` attempt=${v.attempt}` : ""}${v.reason ? ` ${v.reason}` : ""}`,
    );
  } else if (k.case === "output") {
    const o = k.value;
    if (o.type === "assistant" && o.text) out(`  ${o.text}`);
    if (o.type === "conductor" && o.text) out(`  ! ${o.text}`);
    for (const t of o.toolCalls) out(`  → ${t.name} ${t.inputJson.slice(0, 120)}`);
    for (const t of o.deniedToolCalls)
      out(`  ✗ denied ${t.name} ${t.inputJson.slice(0, 120)}${t.denial ? `: ${t.denial}` : ""}`);
  } else if (k.case === "result") {
    const r = k.value;
    out(`result: ${r.error || r.text}`);
    const denied = r.deniedToolCalls;
    if (denied.length > 0)
      out(`  ✗ ${denied.length} tool call(s) denied: ${denied.map((t) => t.name).join(", ")}`);
    out(
      `  turns=${r.numTurns} tokens in=${r.usage?.inputTokens ?? 0} out=${r.usage?.outputTokens ?? 0} cost=$${r.costUsd.toFixed(4)} duration=${r.durationMs}ms`,
    );
  }
}

function int(s: string | undefined, flag: string): number {
  if (s === undefined) return 0;
  const n = Number(s);
  if (!Number.isInteger(n)) throw new Error(`${flag} must be a whole number, got "${s}"`);
  return n;
}

function parseState(s: string): TaskState {
  const name = s.toUpperCase().replace(/^TASK_STATE_/, "");
  const value = (TaskState as unknown as Record<string, number>)[name];
  if (value === undefined || value === 0)
    throw new Error(
      `unknown state "${s}"; use queued, scheduled, running, succeeded, failed, cancelled or timed_out`,
    );
  return value;
}

function pad(cols: string[]): string {
  const widths = [36, 10, 4, 10, 9, 0];
  return cols.map((c, i) => (widths[i] ? c.padEnd(widths[i]) : c)).join(" ");
}
