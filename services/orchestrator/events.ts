import { create } from "@bufbuild/protobuf";
import {
  StateChangeSchema,
  type TaskEvent,
  type TaskState,
} from "../../gen/conductor/v1/task_pb.js";
import { AsyncQueue } from "../shared/async-queue.ts";
import type { OrchestratorObserver } from "./observer.ts";
import { FINAL_STATES, type TaskStore } from "./store.ts";

/** A state change as written to a task's events. */
export interface Change {
  state: TaskState;
  agentId?: string;
  attempt?: number;
  reason?: string;
}

/**
 * A task's events: each is stored first, then handed to the task's watchers; state changes
 * also go to the observer (metrics, traces).
 */
export class TaskEvents {
  private readonly watchers = new Map<string, Set<(e: TaskEvent) => void>>();
  private readonly store: TaskStore;
  private readonly observer: OrchestratorObserver | undefined;

  constructor(store: TaskStore, observer: OrchestratorObserver | undefined) {
    this.store = store;
    this.observer = observer;
  }

  /** A durable change of state (the store's row has already changed). */
  record(id: string, change: Change, now: number): void {
    const value = create(StateChangeSchema, change);
    this.append(id, { case: "stateChange", value }, now);
    const meta = this.observer && this.store.meta(id);
    if (!this.observer || !meta) return;
    this.observer.transition({
      ...meta,
      taskId: id,
      state: value.state,
      attempt: value.attempt,
      agentId: value.agentId,
      reason: value.reason,
      at: now,
    });
  }

  /** A word to watchers about the task's current state (no transition: not counted as one). */
  note(id: string, change: Change, now: number): void {
    this.append(id, { case: "stateChange", value: create(StateChangeSchema, change) }, now);
  }

  /** Stores any event (output, result) and tells the watchers; returns it as stored. */
  append(id: string, kind: TaskEvent["kind"], now: number): TaskEvent {
    const event = this.store.appendEvent(id, kind, now);
    for (const fn of this.watchers.get(id) ?? []) fn(event);
    return event;
  }

  /** Streams a task's stored events, then live ones, ending after its final state. */
  async *watch(id: string, signal: AbortSignal): AsyncGenerator<TaskEvent> {
    const queue = new AsyncQueue<TaskEvent>();
    const listener = (e: TaskEvent) => queue.push(e);
    const set = this.watchers.get(id) ?? new Set();
    set.add(listener);
    this.watchers.set(id, set);
    const onAbort = () => queue.end();
    signal.addEventListener("abort", onAbort);
    try {
      let last = 0n;
      for (const e of this.store.events(id)) {
        last = e.seq;
        yield e;
        if (isFinal(e)) return;
      }
      for await (const e of queue) {
        if (e.seq <= last) continue;
        last = e.seq;
        yield e;
        if (isFinal(e)) return;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      set.delete(listener);
      if (set.size === 0) this.watchers.delete(id);
    }
  }
}

function isFinal(e: TaskEvent): boolean {
  return e.kind.case === "stateChange" && FINAL_STATES.has(e.kind.value.state);
}
