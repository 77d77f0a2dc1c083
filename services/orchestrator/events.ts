import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ErrorKind,
  StateChangeSchema,
  TaskEventSchema,
  TaskResultSchema,
  TaskState,
  type Task,
  type TaskEvent,
} from "../../gen/conductor/v1/task_pb.js";
import type { OrchestratorObserver } from "./observer.ts";
import { FINAL_STATES, type PageLimits, type TaskStore, type TaskUpdate } from "./store.ts";

/** A state change as written to a task's events. */
export interface Change {
  state: TaskState;
  agentId?: string;
  attempt?: number;
  reason?: string;
}

/**
 * How a task ends whose dependency `depId` ended in `state` (not SUCCEEDED); `cause` says why
 * that one ended, when it too was ended by a dependency. `what` is the cause for the next.
 */
export function dependencyFailed(depId: string, state: TaskState, cause = "") {
  const what = `${depId} ended ${TaskState[state]}${cause ? ` (${cause})` : ""}`;
  const error = `dependency ${what}, so this task cannot run`;
  const result = create(TaskResultSchema, {
    isError: true,
    error,
    errorKind: ErrorKind.DEPENDENCY,
  });
  return { result, change: { state: TaskState.CANCELLED, reason: error }, what };
}

/**
 * What one WatchTask stream reads from the store at a time: a stream holds at most one such
 * page (plus the message being written), however long the history or slow the reader.
 */
export const WATCH_PAGE: PageLimits = { maxEvents: 256, maxBytes: 1024 * 1024 };

/** Most changed tasks a watchAll stream holds for a reader before it ends the stream. */
export const WATCH_ALL_BEHIND = 10_000;
/** Most watchAll streams open at once (each is told of every change). */
export const WATCH_ALL_STREAMS = 64;

/**
 * A task's events: each is stored first — a state change in the same transaction as the task's
 * row, so neither is ever stored without the other — then watchers are woken; state changes
 * also go to the observer (metrics, traces).
 */
export class TaskEvents {
  /** Wakers of the streams that have read all of a task's stored events, by task. */
  private readonly sleepers = new Map<string, Set<() => void>>();
  private readonly store: TaskStore;
  private readonly observer: OrchestratorObserver | undefined;
  private readonly page: PageLimits;
  /** Told of every state change once it is stored (task groups, watchAll). */
  private readonly listeners: ((id: string, change: Change, now: number) => void)[] = [];
  /** Open watchAll streams. */
  private watchingAll = 0;

  /** How many watchAll streams are open. */
  get allWatchers(): number {
    return this.watchingAll;
  }

  constructor(
    store: TaskStore,
    observer: OrchestratorObserver | undefined,
    page: PageLimits = WATCH_PAGE,
  ) {
    this.store = store;
    this.observer = observer;
    this.page = page;
  }

  /** Calls `fn` with every state change, once it is stored, until the returned stop is called. */
  listen(fn: (id: string, change: Change, now: number) => void): () => void {
    this.listeners.push(fn);
    return () => {
      const at = this.listeners.indexOf(fn);
      if (at >= 0) this.listeners.splice(at, 1);
    };
  }

  /**
   * Stores a new task and its first change (QUEUED) together, in the next group commit (see
   * TaskStore.commit); resolves once both are on disk. A duplicate adds no event.
   */
  async submitted(
    insert: () => { task: Task; created: boolean },
    change: Change,
    now: number,
  ): Promise<{ task: Task; created: boolean }> {
    const [out] = await this.submittedAll(() => [insert()], change, now);
    return out!;
  }

  /** submitted() for many tasks, all stored in one transaction or none. */
  async submittedAll(
    insert: () => { task: Task; created: boolean }[],
    change: Change,
    now: number,
  ): Promise<{ task: Task; created: boolean }[]> {
    return this.store.commit(
      () => {
        const all = insert();
        for (const r of all)
          if (r.created) this.store.appendEvent(r.task.id, stateChange(change), now);
        return all;
      },
      (all) => {
        for (const r of all) if (r.created) this.told(r.task.id, change, now);
      },
    );
  }

  /**
   * Changes a task still in one of `from` and stores the change, after the events `before`
   * (e.g. the result), in one transaction. Returns whether the task was in `from`. Throws
   * (StorageFull on a full disk) with nothing stored.
   */
  transition(
    id: string,
    from: TaskState[],
    update: TaskUpdate,
    change: Change,
    now: number,
    before: TaskEvent["kind"][] = [],
  ): boolean {
    const done = this.store.tx(() => this.change(id, from, update, change, now, before));
    this.toldOf(id, change, now, done);
    return done.changed;
  }

  /**
   * transition() in the next group commit (see TaskStore.commit): resolves once the change
   * is on disk, with whether the task was in `from`; watchers hear of it only then.
   */
  transitionBatched(...args: Parameters<TaskEvents["transition"]>): Promise<boolean> {
    const [id, from, update, change, now, before = []] = args;
    return this.store
      .commit(
        () => this.change(id, from, update, change, now, before),
        (done) => this.toldOf(id, change, now, done),
      )
      .then((done) => done.changed);
  }

  private change(
    id: string,
    from: TaskState[],
    update: TaskUpdate,
    change: Change,
    now: number,
    before: TaskEvent["kind"][],
  ): { changed: boolean; cancelled: { id: string; change: Change }[] } {
    if (!this.store.transition(id, from, { ...update, state: change.state }, now))
      return { changed: false, cancelled: [] };
    this.store.appendEvents(id, [...before, stateChange(change)], now);
    const cancelled = FINAL_STATES.has(change.state)
      ? this.settleDependents(id, change.state, now)
      : [];
    return { changed: true, cancelled };
  }

  private toldOf(
    id: string,
    change: Change,
    now: number,
    done: { changed: boolean; cancelled: { id: string; change: Change }[] },
  ): void {
    if (done.changed) this.told(id, change, now);
    for (const c of done.cancelled) this.told(c.id, c.change, now);
  }

  /**
   * In the transaction that ended task `id` in `state`: its queued dependents wait for one
   * less if it SUCCEEDED; otherwise they end CANCELLED (error_kind DEPENDENCY) naming it, and
   * so, in turn, do theirs. Returns the cancelled ones, to tell their watchers.
   */
  private settleDependents(id: string, state: TaskState, now: number) {
    const cancelled: { id: string; change: Change }[] = [];
    const ended = [{ id, state, cause: "" }];
    for (let next = ended.pop(); next; next = ended.pop()) {
      const dependents = this.store.queuedDependents(next.id);
      // Those waiting for it to end, and all of them when it succeeded, wait for one less.
      const through = dependents.filter((d) => d.ends || next.state === TaskState.SUCCEEDED);
      this.store.dependencySucceeded(through.map((d) => d.id));
      if (next.state === TaskState.SUCCEEDED) continue;
      for (const { id: dependent, ends } of dependents) {
        if (ends) continue;
        const { result, change, what } = dependencyFailed(next.id, next.state, next.cause);
        const update = { state: TaskState.CANCELLED, endTime: now, result };
        if (!this.store.transition(dependent, [TaskState.QUEUED], update)) continue;
        this.store.appendEvents(
          dependent,
          [{ case: "result", value: result }, stateChange(change)],
          now,
        );
        cancelled.push({ id: dependent, change });
        ended.push({ id: dependent, state: TaskState.CANCELLED, cause: what });
      }
    }
    return cancelled;
  }

  /** A word to watchers about the task's current state (no transition: not counted as one). */
  note(id: string, change: Change, now: number): void {
    this.append(id, stateChange(change), now);
  }

  /** Stores any event (output) and wakes the watchers; returns it as stored. */
  append(id: string, kind: TaskEvent["kind"], now: number): TaskEvent {
    const event = this.store.appendEvent(id, kind, now);
    this.wake(id);
    return event;
  }

  /** append() in the next group commit: resolves once the event is on disk, watchers woken. */
  appendBatched(id: string, kind: TaskEvent["kind"], now: number): Promise<TaskEvent> {
    return this.store.commit(
      () => this.store.appendEvent(id, kind, now),
      () => this.wake(id),
    );
  }

  /**
   * Streams a task's events from the store, a page at a time: the next page is read only
   * once the previous one was taken by the stream (connect writes each message before asking
   * for the next), so a reader that does not read holds one page. A stream that has read all
   * there is sleeps until more is stored; it ends after the task's final state. A task that
   * ended without its final event stored (a database from an older version) gets one made
   * from its row, so every watch of an ended task ends. `after`: only events after this seq.
   */
  async *watch(id: string, signal: AbortSignal, after = 0n): AsyncGenerator<TaskEvent> {
    let last = after;
    while (!signal.aborted) {
      const page = this.store.eventPage(id, last, this.page);
      for (const e of page) {
        last = e.seq;
        yield e;
        if (isFinal(e)) return;
      }
      if (page.length > 0) continue;
      // All stored events read; nothing can be stored between this check and the sleep.
      const state = this.store.state(id);
      if (state === undefined) return;
      if (FINAL_STATES.has(state)) {
        const task = this.store.get(id);
        if (task) yield endFromRow(task, last + 1n);
        return;
      }
      await this.sleep(id, signal);
    }
  }

  /**
   * Each task, as it stands, whenever its state changes, until `signal` aborts. Changes that
   * come faster than the reader takes them are coalesced (the latest of each task is sent
   * once); a reader more than WATCH_ALL_BEHIND tasks behind gets RESOURCE_EXHAUSTED, and at
   * most WATCH_ALL_STREAMS such streams are open at once.
   */
  async *watchAll(signal: AbortSignal): AsyncGenerator<Task> {
    if (this.watchingAll >= WATCH_ALL_STREAMS) {
      throw new ConnectError(
        `${WATCH_ALL_STREAMS} streams already watch every task; close one, or watch tasks one at a time`,
        Code.ResourceExhausted,
      );
    }
    const pending = new Set<string>();
    let behind = false;
    let wake: (() => void) | undefined;
    const stop = this.listen((id) => {
      if (pending.size >= WATCH_ALL_BEHIND) behind = true;
      else pending.add(id);
      wake?.();
    });
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort);
    this.watchingAll++;
    try {
      while (!signal.aborted) {
        if (behind) {
          throw new ConnectError(
            `the reader fell more than ${WATCH_ALL_BEHIND} tasks behind: list the tasks again and watch anew`,
            Code.ResourceExhausted,
          );
        }
        const id = pending.values().next().value;
        if (id === undefined) {
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
          continue;
        }
        pending.delete(id);
        const task = this.store.get(id);
        if (task) yield task;
      }
    } finally {
      this.watchingAll--;
      stop();
      signal.removeEventListener("abort", onAbort);
    }
  }

  private told(id: string, change: Change, now: number): void {
    this.wake(id);
    for (const fn of this.listeners) fn(id, change, now);
    const meta = this.observer && this.store.meta(id);
    if (!this.observer || !meta) return;
    this.observer.transition({
      ...meta,
      taskId: id,
      state: change.state,
      attempt: change.attempt ?? 0,
      agentId: change.agentId ?? "",
      reason: change.reason ?? "",
      at: now,
    });
  }

  private wake(id: string): void {
    const set = this.sleepers.get(id);
    if (!set) return;
    this.sleepers.delete(id);
    for (const fn of set) fn();
  }

  /** Resolves when the next event of the task is stored, or the stream is aborted. */
  private sleep(id: string, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const set = this.sleepers.get(id) ?? new Set();
      const done = () => {
        signal.removeEventListener("abort", done);
        set.delete(done);
        if (set.size === 0 && this.sleepers.get(id) === set) this.sleepers.delete(id);
        resolve();
      };
      set.add(done);
      this.sleepers.set(id, set);
      signal.addEventListener("abort", done, { once: true });
    });
  }
}

function stateChange(change: Change): TaskEvent["kind"] {
  return { case: "stateChange", value: create(StateChangeSchema, change) };
}

function isFinal(e: TaskEvent): boolean {
  return e.kind.case === "stateChange" && FINAL_STATES.has(e.kind.value.state);
}

/** The final state change of an ended task, made from its row (its stored one is missing). */
function endFromRow(task: Task, seq: bigint): TaskEvent {
  return create(TaskEventSchema, {
    taskId: task.id,
    seq,
    ...(task.endTime ? { time: task.endTime } : {}),
    kind: stateChange({
      state: task.state,
      agentId: task.agentId,
      attempt: task.attempts,
      reason: task.result?.error ?? "",
    }),
  });
}
