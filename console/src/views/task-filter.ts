// The queue view's filter: in the address (?state=…&label=k=v&group=…), as a ListTasks
// request, and as a test of a task that WatchTasks reports.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ListTasksRequestSchema } from "../../../gen/conductor/v1/orchestrator_pb.js";
import { TaskState, type Task } from "../../../gen/conductor/v1/task_pb.js";
import { ALL_STATES, parseLabels } from "../format.ts";

/** A parsed filter. */
export interface TaskFilter {
  /** The `state` choice: "" (any), "active", or a state name. */
  state: string;
  states: TaskState[];
  labels: Record<string, string>;
  group: string;
  /** Why the address's filter could not be read, if it could not. */
  problem: string | undefined;
}

/** The states "active" means: not yet ended. */
const ACTIVE = [TaskState.QUEUED, TaskState.SCHEDULED, TaskState.RUNNING];

/** The filter the address's query holds. */
export function filterOf(query: Record<string, string | undefined>): TaskFilter {
  const state = query["state"] ?? "";
  const named = ALL_STATES.find((s) => TaskState[s] === state);
  let labels: Record<string, string> = {};
  let problem: string | undefined;
  try {
    labels = parseLabels(query["label"] ?? "");
  } catch (e) {
    problem = (e as Error).message;
  }
  return {
    state,
    states: state === "active" ? ACTIVE : named !== undefined ? [named] : [],
    labels,
    group: query["group"] ?? "",
    problem,
  };
}

/** The ListTasks request of a filter. */
export function listRequest(
  f: TaskFilter,
  pageToken = "",
): MessageInitShape<typeof ListTasksRequestSchema> {
  return { states: f.states, labels: f.labels, groupId: f.group, pageSize: 50, pageToken };
}

/** Whether a task passes the filter. */
export function matches(f: TaskFilter, t: Task): boolean {
  if (f.states.length > 0 && !f.states.includes(t.state)) return false;
  if (f.group && t.groupId !== f.group) return false;
  const labels = t.spec?.labels ?? {};
  return Object.entries(f.labels).every(([k, v]) => labels[k] === v);
}

/**
 * The rows after a change of `t`: replaced where it is, removed when it no longer passes,
 * or put in its place by creation time (newest first) when it is new, unless it is older
 * than every row while more pages remain (it comes with them).
 */
export function upsert(rows: Task[], t: Task, f: TaskFilter, morePages: boolean): Task[] {
  const at = rows.findIndex((r) => r.id === t.id);
  const keep = matches(f, t);
  if (at >= 0) return keep ? rows.with(at, t) : rows.toSpliced(at, 1);
  if (!keep) return rows;
  const created = key(t);
  const before = rows.findIndex((r) => key(r) < created);
  if (before < 0) return morePages ? rows : [...rows, t];
  return rows.toSpliced(before, 0, t);
}

function key(t: Task): number {
  const c = t.createTime;
  return c ? Number(c.seconds) * 1e3 + c.nanos / 1e6 : 0;
}
