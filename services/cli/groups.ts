import { create, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import {
  GroupMemberSchema,
  TaskGroupSchema,
  TaskGroupSpecSchema,
  type GroupAggregate,
  type TaskGroup,
  type TaskGroupSpec,
} from "../../gen/conductor/v1/group_pb.js";
import {
  WatchTaskGroupResponseSchema,
  type OrchestratorService,
} from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskState, type TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { bool, list, str, UsageError, type ParsedCommand } from "./args.ts";
import { count, duration, oneLine, printable, stateName, table, usd } from "./format.ts";
import { int } from "./submit-spec.ts";
import { readYamlFile, specOfFields } from "./spec-file.ts";

type Orch = Client<typeof OrchestratorService>;

const USAGE = "usage: conductor group submit -f FILE | get <id> | watch <id> | cancel <id> | list";

/** Fields of a group file besides the specs: passed to TaskGroupSpec as they are. */
const GROUP_FIELDS = new Set([
  "name",
  "max_parallel",
  "maxParallel",
  "fail_fast",
  "failFast",
  "idempotency_key",
  "idempotencyKey",
  "budget",
  "labels",
  "spread",
]);

/**
 * Reads a group file (YAML or JSON): TaskGroupSpec's fields by their proto names, where each
 * spec (members' entries, template, reduce) is written as a task spec file is, and a member
 * is its name beside its spec's fields, e.g.
 *
 *     name: review-campaign
 *     max_parallel: 3
 *     template: { prompt: "Review {{repository}}", workspace: { git: { repository: "{{repository}}" } } }
 *     matrix: { repository: [/srv/git/api.git, /srv/git/web.git] }
 *     reduce: { prompt: "Merge these reviews into one verdict: {{members}}" }
 *
 * `matrix` may also be a list of {name, values}. Errors name the file and the entry.
 */
export function readGroupFile(file: string, home: string): TaskGroupSpec {
  const doc = readYamlFile(file);
  if (doc === null || typeof doc !== "object" || Array.isArray(doc))
    throw new UsageError(
      `${file} should hold a task group: a mapping with members (or template and matrix), max_parallel, …`,
    );
  const fields = doc as Record<string, unknown>;
  const known = new Set([...GROUP_FIELDS, "members", "template", "matrix", "reduce"]);
  for (const k of Object.keys(fields))
    if (!known.has(k))
      throw new UsageError(
        `${file}: unknown field "${oneLine(k, 40)}"; a group has ${[...known].filter((f) => !/[A-Z]/.test(f)).join(", ")}`,
      );
  const plain: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) if (GROUP_FIELDS.has(k)) plain[k] = v;
  let spec: TaskGroupSpec;
  try {
    spec = fromJson(TaskGroupSpecSchema, plain as JsonValue);
  } catch (e) {
    throw new UsageError(`${file}: ${(e as Error).message.replaceAll("conductor.v1.", "")}`, {
      cause: e,
    });
  }
  const specOf = (v: unknown, where: string): TaskSpec => {
    if (v === null || typeof v !== "object" || Array.isArray(v))
      throw new UsageError(`${file} (${where}): expected a mapping of task spec fields`);
    return specOfFields(v as Record<string, unknown>, file, where, home);
  };
  const members = fields["members"];
  if (members !== undefined) {
    if (!Array.isArray(members))
      throw new UsageError(`${file}: members should be a list of {name, prompt, …}`);
    spec.members = members.map((m: unknown, i) => {
      const where = `members[${i}]`;
      if (m === null || typeof m !== "object" || Array.isArray(m))
        throw new UsageError(`${file} (${where}): expected {name, prompt, …}`);
      const { name, spec: inner, ...rest } = m as Record<string, unknown>;
      if (typeof name !== "string" || !name)
        throw new UsageError(`${file} (${where}): name is required`);
      return create(GroupMemberSchema, { name, spec: specOf(inner ?? rest, `${where}, ${name}`) });
    });
  }
  if (fields["template"] !== undefined) spec.template = specOf(fields["template"], "template");
  if (fields["reduce"] !== undefined) spec.reduce = specOf(fields["reduce"], "reduce");
  const matrix = fields["matrix"];
  if (matrix !== undefined) {
    const entries = Array.isArray(matrix)
      ? matrix.map((p: unknown) => [
          (p as { name?: unknown })?.name,
          (p as { values?: unknown })?.values,
        ])
      : typeof matrix === "object" && matrix !== null
        ? Object.entries(matrix)
        : [];
    if (entries.length === 0)
      throw new UsageError(`${file}: matrix should map each parameter to its values`);
    spec.matrix = entries.map(([name, values]) => {
      if (typeof name !== "string" || !Array.isArray(values))
        throw new UsageError(`${file}: matrix parameter ${String(name)} needs a list of values`);
      return { $typeName: "conductor.v1.MatrixParameter", name, values: values.map(String) };
    });
  }
  return spec;
}

/**
 * The group `submit --each PARAM=V1,V2 … "<prompt>"` stands for: the task spec as the
 * template, one member per combination of the values (--max-parallel, --fail-fast, --reduce).
 */
export function groupOfSubmit(p: ParsedCommand, template: TaskSpec): TaskGroupSpec {
  const each = list(p, "each");
  if (each.length === 0)
    throw new UsageError(
      "submit --group needs --each PARAM=V1,V2,… (its members: one per value, the prompt saying {{PARAM}})",
    );
  const group = create(TaskGroupSpecSchema, {
    name: str(p, "group") ?? "",
    template,
    maxParallel: int(p, "max-parallel") ?? 0,
    failFast: bool(p, "fail-fast"),
    idempotencyKey: template.idempotencyKey,
  });
  template.idempotencyKey = "";
  for (const e of each) {
    const eq = e.indexOf("=");
    if (eq <= 0) throw new UsageError(`--each "${oneLine(e, 40)}": expected PARAM=V1,V2,…`);
    group.matrix.push({
      $typeName: "conductor.v1.MatrixParameter",
      name: e.slice(0, eq),
      values: e
        .slice(eq + 1)
        .split(",")
        .map((v) => v.trim())
        .filter(Boolean),
    });
  }
  const reduce = str(p, "reduce");
  if (reduce !== undefined)
    group.reduce = { ...template, prompt: reduce, dependsOn: [], labels: {} };
  return group;
}

/** `conductor group …`: submit, get, watch, cancel or list task groups. */
export async function group(
  client: Orch,
  p: ParsedCommand,
  home: string,
  out: (line: string) => void,
): Promise<number> {
  const [verb, id, ...rest] = p.positionals;
  const asJson = bool(p, "json");
  const needId = () => {
    if (!id || rest.length > 0) throw new UsageError(`usage: conductor group ${verb} <group-id>`);
    return id;
  };
  switch (verb) {
    case "submit": {
      const file = str(p, "file");
      if (!file || id) throw new UsageError("usage: conductor group submit -f FILE");
      const { group: g, deduplicated } = await client.submitTaskGroup({
        spec: readGroupFile(file, home),
      });
      if (asJson) out(JSON.stringify(toJson(TaskGroupSchema, g!)));
      else out(deduplicated ? `${g!.id} (already submitted with that idempotency key)` : g!.id);
      return bool(p, "wait") ? await watchGroup(client, g!.id, asJson, out) : 0;
    }
    case "get": {
      const { group: g } = await client.getTaskGroup({ id: needId() });
      if (asJson) out(JSON.stringify(toJson(TaskGroupSchema, g!), null, 2));
      else groupText(g!).forEach((l) => out(l));
      return 0;
    }
    case "watch":
      return await watchGroup(client, needId(), asJson, out);
    case "cancel": {
      const { group: g } = await client.cancelTaskGroup({ id: needId() });
      out(asJson ? JSON.stringify(toJson(TaskGroupSchema, g!)) : `${g!.id} ${stateName(g!.state)}`);
      return 0;
    }
    case "list": {
      if (id) throw new UsageError("usage: conductor group list");
      const { groups } = await client.listTaskGroups({ pageSize: 100 });
      if (asJson) {
        groups.forEach((g) => out(JSON.stringify(toJson(TaskGroupSchema, g))));
        return 0;
      }
      if (groups.length === 0) {
        out("no task groups yet: conductor group submit -f group.yaml");
        return 0;
      }
      const rows = groups.map((g) => [
        g.id,
        stateName(g.state).toLowerCase(),
        printable(oneLine(g.spec?.name ?? "", 30)) || "-",
        counts(g.aggregate),
        usd(g.aggregate?.costUsd ?? 0),
      ]);
      table(["GROUP", "STATE", "NAME", "TASKS", "COST"], rows).forEach((l) => out(l));
      return 0;
    }
  }
  throw new UsageError(USAGE);
}

/** Follows a group to its end; exits 0 only if it SUCCEEDED. */
export async function watchGroup(
  client: Orch,
  id: string,
  asJson: boolean,
  out: (line: string) => void,
): Promise<number> {
  let last: TaskGroup | undefined;
  for await (const msg of client.watchTaskGroup({ id })) {
    if (msg.group) last = msg.group;
    if (asJson) {
      out(JSON.stringify(toJson(WatchTaskGroupResponseSchema, msg)));
      continue;
    }
    const c = msg.change;
    if (c?.change) {
      const reason = c.change.reason ? ` — ${oneLine(c.change.reason, 100)}` : "";
      out(
        `${printable(c.member)} ${stateName(c.change.state).toLowerCase()}${reason}  [${counts(msg.aggregate)}]`,
      );
    } else if (msg.group) {
      out(
        `group ${msg.group.id} ${stateName(msg.group.state).toLowerCase()}  [${counts(msg.group.aggregate)}]`,
      );
    }
  }
  if (!asJson && last?.endTime) groupText(last).forEach((l) => out(l));
  return last?.state === TaskState.SUCCEEDED ? 0 : 1;
}

/** "3 succeeded · 1 running" */
function counts(a: GroupAggregate | undefined): string {
  const parts = Object.entries(a?.tasksByState ?? {})
    .filter(([, n]) => n > 0n)
    .map(([k, n]) => `${count(n)} ${k.replace(/^TASK_STATE_/, "").toLowerCase()}`);
  return parts.join(" · ") || "none";
}

/** A group for people: its state, aggregate, each member's outcome and the result. */
export function groupText(g: TaskGroup): string[] {
  const a = g.aggregate;
  const lines = [
    `group     ${g.id}${g.spec?.name ? ` (${printable(oneLine(g.spec.name, 60))})` : ""}`,
    `state     ${stateName(g.state)}${g.reason ? ` — ${printable(oneLine(g.reason, 200))}` : ""}`,
    `tasks     ${counts(a)}`,
    `spent     ${usd(a?.costUsd ?? 0)} · ${count(a?.usage?.inputTokens ?? 0n)} in · ${count(a?.usage?.outputTokens ?? 0n)} out · agents ${duration(Number(a?.durationMs ?? 0n))} · elapsed ${duration(Number(a?.elapsedMs ?? 0n))}`,
  ];
  if (g.spec?.maxParallel) lines.push(`parallel  at most ${g.spec.maxParallel}`);
  if (g.members.length > 0) {
    lines.push("");
    table(
      ["MEMBER", "TASK", "STATE", "TRIES", "COST", "ERROR"],
      g.members.map((m) => [
        printable(oneLine(m.name, 40)),
        m.taskId,
        stateName(m.state).toLowerCase(),
        String(m.attempts),
        usd(m.costUsd),
        printable(oneLine(m.error, 60)) || "-",
      ]),
    ).forEach((l) => lines.push(l));
  }
  if (g.reduceTaskId) lines.push("", `reduce    ${g.reduceTaskId}`);
  if (g.result?.text) lines.push("", "result:", ...g.result.text.split("\n").map(printable));
  return lines;
}
