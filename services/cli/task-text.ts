import {
  ErrorKind,
  type Task,
  type TaskEvent,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { changeLines, checkLines } from "./change-text.ts";
import { oneLine, stateName, usage, when } from "./format.ts";

/** A task as `conductor get` shows it. */
export function taskText(t: Task): string[] {
  const s = t.spec;
  const rows: [string, string][] = [
    ["id", t.id],
    ["state", stateName(t.state)],
    ...(t.queueReason ? [["held", t.queueReason] as [string, string]] : []),
    ["agent", t.agentId || "-"],
    ["attempts", `${t.attempts}${s?.maxAttempts ? ` of ${s.maxAttempts}` : ""}`],
    ["created", when(t.createTime)],
    ["started", when(t.startTime)],
    ["ended", when(t.endTime)],
    ["type", s?.type || "generic"],
    ["priority", String(s?.priority ?? 0)],
  ];
  if (s?.model) rows.push(["model", s.model]);
  if (s?.maxTurns) rows.push(["max turns", String(s.maxTurns)]);
  if (s?.timeoutSeconds) rows.push(["timeout", `${s.timeoutSeconds} s`]);
  if (s?.permissionMode) rows.push(["permissions", s.permissionMode]);
  if (s?.allowedTools.length) rows.push(["tools", s.allowedTools.join(", ")]);
  const labels = Object.entries(s?.labels ?? {});
  if (labels.length) rows.push(["labels", labels.map(([k, v]) => `${k}=${v}`).join(" ")]);
  if (s?.idempotencyKey) rows.push(["idempotency", s.idempotencyKey]);
  if (s?.dependsOn.length) rows.push(["depends on", s.dependsOn.join(" ")]);
  if (t.groupId) rows.push(["group", `${t.groupId} (member ${t.member})`]);
  const params = Object.entries(s?.params ?? {});
  if (params.length) rows.push(["params", params.map(([k, v]) => `${k}=${v}`).join(" ")]);
  if (s) rows.push(...workspaceRows(s, t.id));
  const r = t.result;
  if (r) {
    if (r.error) rows.push(["error", r.error]);
    if (r.errorKind) rows.push(["error kind", ErrorKind[r.errorKind] ?? String(r.errorKind)]);
    const used = usage(r);
    if (used) rows.push(["run", used]);
    if (r.sessionId) rows.push(["session", r.sessionId]);
    for (const d of r.deniedToolCalls) {
      rows.push([
        "denied",
        `${d.name} ${oneLine(d.inputJson, 120)}${d.denial ? `: ${d.denial}` : ""}`,
      ]);
    }
    if (r.truncated) rows.push(["truncated", "the whole result: GetTaskOutput (event_seq 0)"]);
  }
  const width = Math.max(...rows.map(([k]) => k.length)) + 2;
  const lines = rows.map(([k, v]) => `${k.padEnd(width)}${v}`);
  if (r?.change) lines.push("", "change:", ...changeLines(r.change).map((l) => `  ${l}`));
  if (r?.checks.length) {
    const planned = s?.checks.length ?? 0;
    lines.push("", "checks:", ...checkLines(r.checks, planned).map((l) => `  ${l}`));
  }
  lines.push("", "prompt:", indent(s?.prompt ?? ""));
  if (r?.structured) lines.push("", "structured:", indent(JSON.stringify(r.structured, null, 2)));
  else if (r?.text) lines.push("", "result:", indent(r.text));
  return lines;
}

/** Where a task's agent works and the checks it asked for, as rows of `get`. */
function workspaceRows(s: TaskSpec, id: string): [string, string][] {
  const rows: [string, string][] = [];
  const w = s.workspace?.kind;
  if (w?.case === "git") {
    const g = w.value;
    const at = g.ref ? ` at ${g.ref}` : "";
    const onto = `${g.branch || `conductor/${id || "<task id>"}`}${g.push ? ", pushed" : ""}`;
    rows.push(["workspace", `git ${g.repository}${at} → ${onto}`]);
  } else if (w?.case === "hostPath") {
    rows.push(["workspace", `${w.value.path}${w.value.readOnly ? " (read-only)" : ""}`]);
  }
  for (const c of s.checks) {
    const limit = c.timeoutSeconds ? ` (timeout ${c.timeoutSeconds} s)` : "";
    rows.push(["check", `${oneLine(c.command, 100)}${limit}`]);
  }
  return rows;
}

function indent(text: string): string {
  return text
    .split("\n")
    .map((l) => `  ${l}`)
    .join("\n");
}

/** An event as `conductor watch` shows it, as lines (none for lines it has nothing to say about). */
export function eventText(e: TaskEvent): string[] {
  const k = e.kind;
  if (k.case === "stateChange") {
    const v = k.value;
    const parts = [`[${stateName(v.state)}]`];
    if (v.agentId) parts.push(`agent=${v.agentId}`);
    if (v.attempt) parts.push(`attempt=${v.attempt}`);
    if (v.reason) parts.push(v.reason);
    return [parts.join(" ")];
  }
  if (k.case === "output") {
    const o = k.value;
    const lines: string[] = [];
    // Every line of the agent's text indented: none of it can pass for a state line.
    if (o.type === "assistant" && o.text) lines.push(indent(o.text));
    if (o.type === "conductor" && o.text) lines.push(`  ! ${o.text}`);
    for (const t of o.toolCalls) lines.push(`  → ${t.name} ${oneLine(t.inputJson, 120)}`);
    for (const t of o.deniedToolCalls) {
      const why = t.denial ? `: ${oneLine(t.denial, 200)}` : "";
      lines.push(`  ✗ denied ${t.name} ${oneLine(t.inputJson, 120)}${why}`);
    }
    return lines;
  }
  if (k.case === "result") {
    const r = k.value;
    const lines = [`result: ${(r.error || r.text).replaceAll("\n", "\n  ")}`];
    const denied = r.deniedToolCalls;
    if (denied.length > 0) {
      lines.push(
        `  ✗ ${denied.length} tool call(s) denied: ${denied.map((t) => t.name).join(", ")}`,
      );
    }
    const used = usage(r);
    if (used) lines.push(`  ${used}`);
    if (r.change) lines.push("  change:", ...changeLines(r.change).map((l) => `    ${l}`));
    if (r.checks.length) lines.push("  checks:", ...checkLines(r.checks).map((l) => `    ${l}`));
    return lines;
  }
  return [];
}
