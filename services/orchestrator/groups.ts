import { clone, create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import { timeOrderedId } from "../shared/ids.ts";
import {
  GroupAggregateSchema,
  GroupMemberStatusSchema,
  TaskGroupSchema,
  TaskGroupSpecSchema,
  type GroupAggregate,
  type GroupMemberChange,
  type TaskGroup,
  type TaskGroupSpec,
} from "../../gen/conductor/v1/group_pb.js";
import {
  BudgetSchema,
  ErrorKind,
  StateChangeSchema,
  TaskResultSchema,
  TaskSpecSchema,
  TaskState,
  UsageSchema,
  type Task,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { invalid, notFound, precondition } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { quote } from "../shared/quote.ts";
import type { Change, TaskEvents } from "./events.ts";
import { FINAL_STATES, type GroupRow, type TaskStore } from "./store.ts";
import { checkBudget, checkLabels, CONTROL, DEP_RESULT, SPEC_LIMITS } from "./validate.ts";

/** Bounds of a group spec (documented in group.proto and the README). */
export const GROUP_LIMITS = {
  members: 1000,
  nameBytes: 256,
  memberNameBytes: 128,
  matrixParameters: 8,
  parameterNameBytes: 64,
  valueBytes: 4096,
  /** Most bytes of all members' specs together, encoded (what is stored). */
  membersBytes: 32 * 1024 * 1024,
  /** Most bytes of the members' outcomes a reduce step's prompt is given. */
  outcomesBytes: 96 * 1024,
  /** Most characters of a member's error in GroupMemberStatus. */
  errorChars: 1000,
  /**
   * Most bytes of a group spec, encoded: with its members' outcomes a group still fits any
   * gRPC client's 4 MiB message.
   */
  specBytes: 2 * 1024 * 1024,
} as const;

/** The member name of a group's reduce step. */
export const REDUCE = "reduce";
const MEMBER_NAME = /^[A-Za-z0-9._-]+$/;
const PARAMETER_NAME = /^[A-Za-z][A-Za-z0-9_]*$/;
/** Where a reduce step's prompt takes the members' outcomes. */
const MEMBERS_PLACEHOLDER = "{{members}}";

/** A member as submitted: its name and spec, depends_on still naming members by name. */
export interface MemberSpec {
  name: string;
  spec: TaskSpec;
}

/**
 * The members a group spec stands for: its `members`, or one per combination of its matrix's
 * values made from its template. Checks the group's own fields and names (each problem an
 * INVALID_ARGUMENT naming the field); the members' specs are checked by the caller.
 */
export function expandGroup(spec: TaskGroupSpec): MemberSpec[] {
  const size = toBinary(TaskGroupSpecSchema, spec).byteLength;
  if (size > GROUP_LIMITS.specBytes)
    throw invalid(
      `the group spec is ${size} bytes, over the limit of ${GROUP_LIMITS.specBytes}: give a template and a matrix instead of long member prompts`,
    );
  if (Buffer.byteLength(spec.name) > GROUP_LIMITS.nameBytes)
    throw invalid(`spec.name is over ${GROUP_LIMITS.nameBytes} bytes`);
  if (CONTROL.test(spec.name))
    throw invalid(`spec.name ${quote(spec.name)} contains a control character`);
  checkBudget(spec.budget);
  checkLabels(spec.labels);
  if (Buffer.byteLength(spec.idempotencyKey) > SPEC_LIMITS.idempotencyKeyBytes)
    throw invalid(`spec.idempotency_key is over ${SPEC_LIMITS.idempotencyKeyBytes} bytes`);
  if (!Number.isInteger(spec.maxParallel) || spec.maxParallel < 0 || spec.maxParallel > 10_000)
    throw invalid(`spec.max_parallel must be from 0 (no limit) to 10000, got ${spec.maxParallel}`);
  if (spec.members.length > 0 && (spec.template || spec.matrix.length > 0))
    throw invalid("give either spec.members or spec.template with spec.matrix, not both");
  const members = spec.template ? fromMatrix(spec) : spec.members.map((m) => ({ ...m }));
  if (members.length === 0)
    throw invalid("the group has no members: give spec.members, or spec.template and spec.matrix");
  if (members.length > GROUP_LIMITS.members)
    throw invalid(
      `the group has ${members.length} members, over the limit of ${GROUP_LIMITS.members}`,
    );
  const total = members.reduce(
    (n, m) => n + (m.spec ? toBinary(TaskSpecSchema, m.spec).byteLength : 0),
    0,
  );
  if (total > GROUP_LIMITS.membersBytes)
    throw invalid(
      `the group's members' specs are ${total} bytes in all, over the limit of ${GROUP_LIMITS.membersBytes}: shorten the prompt, or split the group`,
    );
  const seen = new Set<string>();
  return members.map((m, i) => {
    const where = `spec.members[${i}]`;
    if (!m.name) throw invalid(`${where}.name is required (unique in the group)`);
    if (
      Buffer.byteLength(m.name) > GROUP_LIMITS.memberNameBytes ||
      (!spec.template && !MEMBER_NAME.test(m.name))
    )
      throw invalid(
        `${where}.name ${quote(m.name)} is not a member name: letters, digits and . _ -, at most ${GROUP_LIMITS.memberNameBytes} bytes`,
      );
    if (m.name === REDUCE)
      throw invalid(`${where}.name "${REDUCE}" is the reduce step's; choose another`);
    if (seen.has(m.name)) throw invalid(`${where}.name ${quote(m.name)} is given twice`);
    seen.add(m.name);
    if (!m.spec) throw invalid(`${where}.spec is required`);
    if (m.spec.idempotencyKey)
      throw invalid(
        `${where}.spec.idempotency_key: members have none of their own; give the group's`,
      );
    return { name: m.name, spec: m.spec };
  });
}

/** The template's members: one per combination of the matrix's values, first parameter slowest. */
function fromMatrix(spec: TaskGroupSpec): MemberSpec[] {
  const template = spec.template!;
  if (spec.matrix.length === 0)
    throw invalid("spec.template needs spec.matrix: the parameters it varies");
  if (spec.matrix.length > GROUP_LIMITS.matrixParameters)
    throw invalid(
      `spec.matrix has ${spec.matrix.length} parameters, over the limit of ${GROUP_LIMITS.matrixParameters}`,
    );
  let count = 1;
  const names = new Set<string>();
  spec.matrix.forEach((p, i) => {
    const where = `spec.matrix[${i}]`;
    if (!PARAMETER_NAME.test(p.name) || p.name.length > GROUP_LIMITS.parameterNameBytes)
      throw invalid(
        `${where}.name ${quote(p.name)} is not a parameter name: a letter, then letters, digits and _`,
      );
    if (names.has(p.name)) throw invalid(`${where}.name ${quote(p.name)} is given twice`);
    names.add(p.name);
    if (p.values.length === 0) throw invalid(`${where} (${p.name}) has no values`);
    if (new Set(p.values).size !== p.values.length)
      throw invalid(`${where} (${p.name}) gives a value twice`);
    for (const v of p.values)
      if (Buffer.byteLength(v) > GROUP_LIMITS.valueBytes)
        throw invalid(`${where} (${p.name}) has a value over ${GROUP_LIMITS.valueBytes} bytes`);
    count *= p.values.length;
    if (count > GROUP_LIMITS.members)
      throw invalid(`spec.matrix makes over ${GROUP_LIMITS.members} members (the limit)`);
  });
  const unknown = templateStrings(template)
    .flatMap((t) => [...t.matchAll(PLACEHOLDER)].map((m) => m[1]!))
    .find((name) => !names.has(name));
  if (unknown !== undefined)
    throw invalid(
      `spec.template refers to {{${unknown}}}, which no matrix parameter fills (the matrix has ${[...names].join(", ")})`,
    );
  const combos: Record<string, string>[] = [{}];
  for (const p of spec.matrix) {
    const next: Record<string, string>[] = [];
    for (const c of combos) for (const v of p.values) next.push({ ...c, [p.name]: v });
    combos.splice(0, combos.length, ...next);
  }
  return combos.map((values, i) => {
    const joined = spec.matrix.map((p) => values[p.name]!).join(",");
    const name =
      Buffer.byteLength(joined) <= GROUP_LIMITS.memberNameBytes && joined !== REDUCE
        ? joined
        : `#${i + 1}`;
    return { name, spec: fillTemplate(template, values) };
  });
}

/** `{{PARAM}}` in a template: a matrix parameter's name. */
const PLACEHOLDER = /\{\{([A-Za-z][A-Za-z0-9_]*)\}\}/g;

/** The strings of a template that may hold `{{PARAM}}`. */
function templateStrings(t: TaskSpec): string[] {
  const ws = t.workspace?.kind;
  return [
    t.prompt,
    ...Object.values(t.labels),
    ...Object.values(t.params),
    ...(ws?.case === "git" ? [ws.value.repository, ws.value.ref, ws.value.branch] : []),
    ...(ws?.case === "hostPath" ? [ws.value.path] : []),
  ];
}

/**
 * The template with each `{{PARAM}}` of its prompt, labels' and params' values and workspace
 * replaced.
 */
function fillTemplate(template: TaskSpec, values: Record<string, string>): TaskSpec {
  const fill = (s: string) => s.replace(PLACEHOLDER, (all, name: string) => values[name] ?? all);
  const spec = clone(TaskSpecSchema, template);
  spec.prompt = fill(spec.prompt);
  for (const k of Object.keys(spec.labels)) spec.labels[k] = fill(spec.labels[k]!);
  for (const k of Object.keys(spec.params)) spec.params[k] = fill(spec.params[k]!);
  const ws = spec.workspace?.kind;
  if (ws?.case === "git") {
    ws.value.repository = fill(ws.value.repository);
    ws.value.ref = fill(ws.value.ref);
    ws.value.branch = fill(ws.value.branch);
  } else if (ws?.case === "hostPath") {
    ws.value.path = fill(ws.value.path);
  }
  return spec;
}

/**
 * Gives each member its task id and makes member names in depends_on (and in
 * `{{deps.NAME.result}}`) those ids. A name that is neither a member nor left as a task id,
 * and a cycle among members, are INVALID_ARGUMENT.
 */
export function linkMembers(members: MemberSpec[]): { name: string; id: string; spec: TaskSpec }[] {
  const ids = new Map(members.map((m) => [m.name, timeOrderedId()]));
  const edges = new Map(members.map((m) => [m.name, m.spec.dependsOn.filter((d) => ids.has(d))]));
  // Depth-first search for a cycle, naming it.
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (name: string) => {
    if (state.get(name) === "done") return;
    if (state.get(name) === "open") {
      const cycle = [...path.slice(path.indexOf(name)), name].join(" → ");
      throw invalid(`the members' depends_on make a cycle: ${cycle}`);
    }
    state.set(name, "open");
    path.push(name);
    for (const d of edges.get(name)!) visit(d);
    path.pop();
    state.set(name, "done");
  };
  for (const m of members) visit(m.name);
  return members.map((m) => {
    const spec = clone(TaskSpecSchema, m.spec);
    spec.dependsOn = spec.dependsOn.map((d) => ids.get(d) ?? d);
    spec.prompt = spec.prompt.replace(DEP_RESULT, (all, d: string) =>
      ids.has(d) ? `{{deps.${ids.get(d)!}.result}}` : all,
    );
    return { name: m.name, id: ids.get(m.name)!, spec };
  });
}

/** A group's state, from its tasks' (see TaskGroup.state). */
export function groupState(row: GroupRow, byState: Map<TaskState, number>): TaskState {
  let active = 0;
  let started = false;
  let allSucceeded = true;
  for (const [state, n] of byState) {
    if (n === 0) continue;
    if (!FINAL_STATES.has(state)) active += n;
    if (state !== TaskState.QUEUED) started = true;
    if (state !== TaskState.SUCCEEDED) allSucceeded = false;
  }
  if (active > 0) return started ? TaskState.RUNNING : TaskState.QUEUED;
  if (row.cancelled) return TaskState.CANCELLED;
  return allSucceeded ? TaskState.SUCCEEDED : TaskState.FAILED;
}

const stateName = (s: TaskState) => `TASK_STATE_${TaskState[s]}`;

/**
 * The reduce step's prompt: its own with the members' outcomes where it says `{{members}}`
 * (or after it), each member's block cut to its share of GROUP_LIMITS.outcomesBytes so the
 * whole stays one CLI argument.
 */
export function reducePrompt(prompt: string, members: Task[]): string {
  const blocks = members.map((t) => {
    const r = t.result;
    const lines = [`## Member ${t.member}: ${TaskState[t.state]}`];
    if (r?.text) lines.push(r.text);
    if (r?.error && t.state !== TaskState.SUCCEEDED) lines.push(`Error: ${r.error}`);
    const c = r?.change;
    if (c?.branch) {
      const files = c.files.map((f) => `${f.path} (+${f.additions} -${f.deletions})`);
      lines.push(
        `Change: branch ${c.branch}, ${c.filesTotal} file(s) changed${files.length ? `: ${files.slice(0, 50).join(", ")}` : ""}${c.filesTotal > 50 ? ", …" : ""}`,
      );
    }
    return lines.join("\n");
  });
  const room = Math.min(
    GROUP_LIMITS.outcomesBytes,
    SPEC_LIMITS.promptBytes - Buffer.byteLength(prompt) - 1024,
  );
  const share = Math.max(256, Math.floor(room / Math.max(1, blocks.length)));
  const cut = blocks.map((b) => cutBytes(b, share)).join("\n\n");
  return prompt.includes(MEMBERS_PLACEHOLDER)
    ? prompt.replaceAll(MEMBERS_PLACEHOLDER, () => cut)
    : `${prompt}\n\n# The members' outcomes\n\n${cut}`;
}

/** The error kind of a group's tasks ended by its cut, from the cut's reason. */
function kindOf(reason: string): ErrorKind {
  return reason.startsWith(BUDGET_REASON) ? ErrorKind.BUDGET : ErrorKind.CANCELLED;
}

const BUDGET_REASON = "group budget exhausted";

const CUT_MARK = "\n[… cut by conductor …]";

/** `text` cut to at most `bytes` UTF-8 bytes, marked when cut. */
function cutBytes(text: string, bytes: number): string {
  if (Buffer.byteLength(text) <= bytes) return text;
  const room = Math.max(0, bytes - Buffer.byteLength(CUT_MARK));
  let kept = Buffer.from(text).subarray(0, room).toString("utf8");
  if (kept.endsWith("\uFFFD")) kept = kept.slice(0, -1);
  return kept + CUT_MARK;
}

/** What the Groups need of the Orchestrator. */
export interface GroupsOptions {
  store: TaskStore;
  events: TaskEvents;
  /** Cancels a task (as CancelTask does); resolves when it has ended. */
  cancelTask: (id: string) => Promise<unknown>;
  log: Logger;
}

/** One change for a group's watchers. */
interface Watched {
  change?: GroupMemberChange;
}

/**
 * Task groups: their aggregate and state (from their tasks' rows), max_parallel and budget at
 * scheduling, fail_fast and CancelTaskGroup, and the streams that watch them.
 */
export class Groups {
  private readonly opts: GroupsOptions;
  /** Watchers of each group: each gets every change, in order. */
  private readonly watchers = new Map<string, Set<(w: Watched) => void>>();

  constructor(opts: GroupsOptions) {
    this.opts = opts;
  }

  /** A group as it stands; `members` lists each member's outcome. NOT_FOUND for none. */
  get(id: string, members = true): TaskGroup {
    if (!id) throw invalid("id is required: the id SubmitTaskGroup gave the group");
    const row = this.opts.store.group({ id });
    if (!row) throw notFound("task group", id);
    return this.view(row, members);
  }

  /** The group with `key` as its idempotency key, if one was submitted. */
  byKey(key: string): TaskGroup | undefined {
    const row = key ? this.opts.store.group({ key }) : undefined;
    return row && this.view(row, true);
  }

  /**
   * A page of groups, newest first, without their members' lists, with each one's cursor
   * (`seqs`); `next` continues after the last.
   */
  list(pageSize: number, before?: number): { groups: TaskGroup[]; seqs: number[]; next?: number } {
    const page = this.opts.store.groups(pageSize, before);
    return {
      groups: page.groups.map((r) => this.view(r, false)),
      seqs: page.groups.map((r) => r.seq),
      ...(page.next !== undefined ? { next: page.next } : {}),
    };
  }

  private view(row: GroupRow, members: boolean): TaskGroup {
    const { store } = this.opts;
    const totals = store.groupTotals(row.id);
    const state = groupState(row, totals.byState);
    // A list shows the group's own fields, not its members' specs (a page stays small).
    const spec = members
      ? row.spec
      : create(TaskGroupSpecSchema, {
          ...row.spec,
          members: [],
          matrix: [],
          template: undefined,
          reduce: undefined,
        });
    const group = create(TaskGroupSchema, {
      id: row.id,
      spec,
      state,
      createTime: timestampFromMs(row.createTime),
      ...(row.endTime !== undefined ? { endTime: timestampFromMs(row.endTime) } : {}),
      aggregate: this.aggregate(row, totals),
      reduceTaskId: row.reduceTaskId,
      reason: row.reason,
    });
    if (members) {
      for (const t of store.groupTasks(row.id)) {
        if (t.id === row.reduceTaskId) {
          if (t.result) group.result = t.result;
          continue;
        }
        group.members.push(
          create(GroupMemberStatusSchema, {
            name: t.member,
            taskId: t.id,
            state: t.state,
            attempts: t.attempts,
            costUsd: t.result?.costUsd ?? 0,
            durationMs: t.result?.durationMs ?? 0n,
            errorKind: t.result?.errorKind ?? ErrorKind.UNSPECIFIED,
            error: (t.result?.error ?? "").slice(0, GROUP_LIMITS.errorChars),
          }),
        );
      }
    } else if (row.reduceTaskId) {
      const reduce = store.get(row.reduceTaskId);
      if (reduce?.result) group.result = reduce.result;
    }
    return group;
  }

  private aggregate(row: GroupRow, t = this.opts.store.groupTotals(row.id)): GroupAggregate {
    const tasksByState: Record<string, bigint> = {};
    for (const [state, n] of t.byState) tasksByState[stateName(state)] = BigInt(n);
    const end = row.endTime ?? Date.now();
    return create(GroupAggregateSchema, {
      tasksByState,
      taskCount: t.count,
      usage: create(UsageSchema, {
        inputTokens: BigInt(t.inputTokens),
        outputTokens: BigInt(t.outputTokens),
      }),
      costUsd: t.costUsd,
      durationMs: BigInt(t.runMs),
      elapsedMs: BigInt(Math.max(0, end - row.createTime)),
    });
  }

  /**
   * The queued tasks of `tasks` that may start now, in order: a group's take at most its room
   * under max_parallel; a group whose budget is spent is cut (its queued tasks end CANCELLED,
   * error_kind BUDGET) and none of its start.
   */
  admit(tasks: Task[], room: Map<string, number>, now: number): Task[] {
    const left = new Map(room);
    const held = new Map<string, boolean>();
    return tasks.filter((task) => {
      if (!task.groupId) return true;
      let hold = held.get(task.groupId);
      if (hold === undefined) {
        hold = this.holds(task.groupId, now);
        held.set(task.groupId, hold);
      }
      if (hold) {
        // A task of a group cut short that came back to the queue (a retry, a restart).
        const row = this.opts.store.group({ id: task.groupId });
        if (row?.reason) this.endQueued(task.id, row.reason, kindOf(row.reason), now);
        return false;
      }
      const n = left.get(task.groupId);
      if (n === undefined) return true;
      if (n <= 0) return false;
      left.set(task.groupId, n - 1);
      return true;
    });
  }

  /** Why the group holds back its queued members now ("" when it does not). */
  holdReason(id: string): string {
    const row = this.opts.store.group({ id });
    if (!row) return "";
    if (row.reason) return `the group was cut short: ${row.reason}`;
    const room = this.opts.store.groupRoom().get(id);
    return room === 0
      ? `the group runs its max_parallel of ${row.maxParallel} members; starts when one ends`
      : "";
  }

  /**
   * For the groups of `tasks` that spread across nodes (TaskGroupSpec.spread): how many of
   * their members run on each AgentHost, for place().
   */
  spreading(tasks: Task[]): Map<string, Map<string, number>> {
    const out = new Map<string, Map<string, number>>();
    for (const t of tasks) {
      if (!t.groupId || out.has(t.groupId)) continue;
      if (this.opts.store.group({ id: t.groupId })?.spec.spread)
        out.set(t.groupId, this.opts.store.groupHosts(t.groupId));
    }
    return out;
  }

  /** Whether a group starts nothing more: it was cut, or its budget is spent (then it is cut). */
  private holds(id: string, now: number): boolean {
    const row = this.opts.store.group({ id });
    if (row?.reason) return true;
    const b = row?.spec.budget;
    if (!row || !b) return false;
    const t = this.opts.store.groupTotals(id);
    const over =
      (b.maxUsd > 0 && t.costUsd >= b.maxUsd) ||
      (b.maxInputTokens > 0n && t.inputTokens >= Number(b.maxInputTokens)) ||
      (b.maxOutputTokens > 0n && t.outputTokens >= Number(b.maxOutputTokens));
    if (!over) return false;
    const reason =
      b.maxUsd > 0 && t.costUsd >= b.maxUsd
        ? `${BUDGET_REASON}: $${t.costUsd.toFixed(4)} of $${b.maxUsd.toFixed(4)}`
        : `${BUDGET_REASON}: ${t.inputTokens} input and ${t.outputTokens} output tokens spent, over its token caps`;
    this.cutLater(row, reason, ErrorKind.BUDGET, now);
    return true;
  }

  /**
   * The spec a group task's attempt runs: a reduce step's prompt given the members' outcomes;
   * a budget no more than what the group has left (plus what the task itself spent before).
   */
  prepare(task: Task, spec: TaskSpec): TaskSpec {
    if (!task.groupId) return spec;
    const { store } = this.opts;
    const row = store.group({ id: task.groupId });
    if (!row) return spec;
    let out = spec;
    if (task.id === row.reduceTaskId) {
      const members = store.groupTasks(row.id).filter((t) => t.id !== row.reduceTaskId);
      out = { ...out, prompt: reducePrompt(spec.prompt, members) };
    }
    const b = row.spec.budget;
    if (b) {
      const t = store.groupTotals(row.id);
      const own = task.result;
      // What is left, never 0 (which would mean no cap): a group spent meanwhile lets the
      // attempt make one model call at most.
      const mine = (cap: number, used: number, ownUsed: number, asked: number, least: number) => {
        if (cap <= 0) return asked;
        const left = Math.max(least, cap - used) + ownUsed;
        return asked > 0 ? Math.min(asked, left) : left;
      };
      const tokens = (cap: bigint, used: number, ownUsed = 0n, asked = 0n) =>
        BigInt(Math.ceil(mine(Number(cap), used, Number(ownUsed), Number(asked), 1)));
      const asked = spec.budget;
      out = {
        ...out,
        budget: create(BudgetSchema, {
          maxUsd: mine(b.maxUsd, t.costUsd, own?.costUsd ?? 0, asked?.maxUsd ?? 0, 1e-9),
          maxInputTokens: tokens(
            b.maxInputTokens,
            t.inputTokens,
            own?.usage?.inputTokens,
            asked?.maxInputTokens,
          ),
          maxOutputTokens: tokens(
            b.maxOutputTokens,
            t.outputTokens,
            own?.usage?.outputTokens,
            asked?.maxOutputTokens,
          ),
        }),
      };
    }
    return out;
  }

  /**
   * Told of every state change of every task (after it is stored): a group's watchers hear of
   * its tasks' changes; a member that ended otherwise than SUCCEEDED cuts a fail_fast group;
   * the group's last task to end ends the group.
   */
  changed(id: string, change: Change, now: number): void {
    const { store } = this.opts;
    const { groupId, member } = store.groupOf(id);
    if (!groupId) return;
    const row = store.group({ id: groupId });
    if (!row) return;
    this.tell(groupId, {
      change: {
        $typeName: "conductor.v1.GroupMemberChange",
        member,
        taskId: id,
        change: create(StateChangeSchema, change),
      },
    });
    if (!FINAL_STATES.has(change.state)) return;
    if (
      row.failFast &&
      !row.reason &&
      change.state !== TaskState.SUCCEEDED &&
      id !== row.reduceTaskId
    ) {
      const error = store.get(id)?.result?.error;
      const why = error ? `: ${error.slice(0, 200)}` : "";
      this.cutLater(
        row,
        `fail_fast: member ${member || id} ended ${TaskState[change.state]}${why}`,
        ErrorKind.CANCELLED,
        now,
      );
    }
    this.endIfDone(groupId, now);
  }

  /** Records the group's end once none of its tasks is left to end, and tells its watchers. */
  private endIfDone(id: string, now: number): void {
    const { store } = this.opts;
    const totals = store.groupTotals(id);
    for (const [state, n] of totals.byState) if (n > 0 && !FINAL_STATES.has(state)) return;
    const row = store.group({ id });
    if (!row || row.endTime !== undefined) return;
    store.endGroup(id, Math.max(now, totals.lastEnd));
    this.tell(id, {});
  }

  /** cut(), not waited for: a failure is logged (the next schedule cuts again). */
  private cutLater(row: GroupRow, reason: string, kind: ErrorKind, now: number): void {
    this.cut(row, reason, kind, now).catch((e: unknown) =>
      this.opts.log.error("could not cut the task group short", { group_id: row.id, error: e }),
    );
  }

  /** CancelTaskGroup: cuts the group; resolves when its running tasks have ended. */
  async cancel(id: string): Promise<TaskGroup> {
    if (!id) throw invalid("id is required: the id SubmitTaskGroup gave the group");
    const row = this.opts.store.group({ id });
    if (!row) throw notFound("task group", id);
    if (row.endTime !== undefined)
      throw precondition(`task group ${id} has already ended; nothing to cancel`);
    await this.cut(row, "cancelled (CancelTaskGroup)", ErrorKind.CANCELLED, Date.now(), true);
    return this.get(id);
  }

  /**
   * Ends a group's tasks not yet ended, saying why: queued ones at once, with the cut itself
   * in one transaction (the reduce step first, so it never starts); running ones as
   * CancelTask does. Once per group.
   */
  private async cut(
    row: GroupRow,
    reason: string,
    kind: ErrorKind,
    now: number,
    cancelled = false,
  ): Promise<void> {
    const { store } = this.opts;
    const cut = store.tx(() => {
      if (!store.cutGroup(row.id, reason, cancelled)) return false;
      for (const id of store.groupTaskIds(row.id, [TaskState.QUEUED]).reverse())
        this.endQueued(id, reason, kind, now);
      return true;
    });
    if (!cut) return;
    const running = store.groupTaskIds(row.id, [TaskState.SCHEDULED, TaskState.RUNNING]);
    await Promise.all(
      running.map((id) =>
        this.opts.cancelTask(id).catch((e: unknown) => {
          // Ended meanwhile, or its outcome waits for the disk: it ends by itself.
          if (!(e instanceof ConnectError)) throw e;
        }),
      ),
    );
    this.endIfDone(row.id, Date.now());
  }

  /** Ends a queued task of a cut group, CANCELLED with the group's reason. */
  private endQueued(id: string, reason: string, kind: ErrorKind, now: number): void {
    const result = create(TaskResultSchema, { isError: true, error: reason, errorKind: kind });
    const change = { state: TaskState.CANCELLED, reason };
    this.opts.events.transition(id, [TaskState.QUEUED], { endTime: now, result }, change, now, [
      { case: "result", value: result },
    ]);
  }

  /** After a restart: groups whose tasks all ended before the stop are recorded as ended. */
  recover(now: number): void {
    for (const row of this.opts.store.openGroups()) this.endIfDone(row.id, now);
  }

  /**
   * Streams the group: as it stands, then each change of its tasks with the aggregate after
   * it, then as it ended. A watcher that falls 1,000 changes behind is sent the whole group
   * instead of what it missed.
   */
  async *watch(
    id: string,
    signal: AbortSignal,
  ): AsyncGenerator<{ group?: TaskGroup; change?: GroupMemberChange; aggregate?: GroupAggregate }> {
    const first = this.get(id);
    const pending: Watched[] = [];
    let behind = false;
    let wake: (() => void) | undefined;
    const listener = (w: Watched) => {
      if (pending.length >= 1000) behind = true;
      else pending.push(w);
      wake?.();
    };
    const set = this.watchers.get(id) ?? new Set();
    set.add(listener);
    this.watchers.set(id, set);
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort);
    try {
      yield { group: first };
      if (first.endTime) return;
      while (!signal.aborted) {
        if (behind) {
          behind = false;
          pending.length = 0;
          const g = this.get(id);
          yield { group: g };
          if (g.endTime) return;
          continue;
        }
        const next = pending.shift();
        if (!next) {
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
          continue;
        }
        if (!next.change) {
          yield { group: this.get(id) };
          return;
        }
        const row = this.opts.store.group({ id });
        yield { change: next.change, ...(row ? { aggregate: this.aggregate(row) } : {}) };
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      set.delete(listener);
      if (set.size === 0 && this.watchers.get(id) === set) this.watchers.delete(id);
    }
  }

  private tell(id: string, w: Watched): void {
    for (const fn of this.watchers.get(id) ?? []) fn(w);
  }
}
