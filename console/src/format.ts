// How the console shows tasks' fields; the CLI's own renderers (services/cli) do the rest,
// so the console and `conductor get`/`watch` say the same things the same way.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { Agent } from "../../gen/conductor/v1/agent_pb.js";
import { TaskState, type Task } from "../../gen/conductor/v1/task_pb.js";
import { duration, millis } from "../../services/cli/format.ts";

export { ago, count, duration, millis, stateName, usd, usage } from "../../services/cli/format.ts";

/** The states a task leaves no more. */
export const FINAL_STATES: readonly TaskState[] = [
  TaskState.SUCCEEDED,
  TaskState.FAILED,
  TaskState.CANCELLED,
  TaskState.TIMED_OUT,
];

/** Whether a task has ended. */
export const isFinal = (s: TaskState): boolean => FINAL_STATES.includes(s);

/** Every state a filter can pick, in the order a task passes them. */
export const ALL_STATES: readonly TaskState[] = [
  TaskState.QUEUED,
  TaskState.SCHEDULED,
  TaskState.RUNNING,
  ...FINAL_STATES,
];

/**
 * The node an agent runs on: its node_id as ListAgents gives it, else the part of its id
 * before ':' (a joined node's agents are "<node>:<n>"), else "local".
 */
export function nodeOf(agentId: string, agents: ReadonlyMap<string, Agent>): string {
  if (!agentId) return "-";
  const known = agents.get(agentId)?.nodeId;
  if (known) return known;
  const colon = agentId.indexOf(":");
  return colon > 0 ? agentId.slice(0, colon) : "local";
}

/** How long a task has run (to its end, or to `now` while it runs); "-" before it started. */
export function runTime(t: Task, now: number): string {
  const start = millis(t.startTime);
  if (start === undefined) return "-";
  return duration(Math.max(0, (millis(t.endTime) ?? now) - start));
}

/** How old a timestamp is at `now`, short: "4 s", "3 min", "2 h", "5 d". */
export function age(at: Timestamp | undefined, now: number): string {
  const ms = millis(at);
  if (ms === undefined) return "-";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86_400)} d`;
}

/**
 * Labels written as `k=v` pairs separated by commas (a value may hold spaces), as a map;
 * throws an Error naming the bad pair.
 */
export function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const pair of text
    .split(/[,\n]/)
    .map((p) => p.trim())
    .filter(Boolean)) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new Error(`label "${pair}" is not key=value`);
    const key = pair.slice(0, eq).trim();
    if (/\s/.test(key))
      throw new Error(`label key "${key}" holds a space; separate labels with commas`);
    labels[key] = pair.slice(eq + 1).trim();
  }
  return labels;
}

/** Labels as `k=v, k2=v2` (what parseLabels reads). */
export const labelsText = (labels: Record<string, string> | undefined): string =>
  Object.entries(labels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
