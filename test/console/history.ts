// A task with a long event history, written straight into an Orchestrator's database (as
// test/watch-load.ts does) so a browser can open it: the console test and bench/console.ts.
import { create } from "@bufbuild/protobuf";
import {
  AgentOutputSchema,
  StateChangeSchema,
  TaskSpecSchema,
  TaskState,
  type TaskEvent,
} from "../../gen/conductor/v1/task_pb.js";
import { TaskStore } from "../../services/orchestrator/store.ts";

/** The text of the `n`th (1-based) output event of a long history. */
export const historyLine = (n: number): string => `history line ${n}`;

/**
 * Writes a task that ran and succeeded after `events` output events ("history line 1" …
 * "history line N"), then its SUCCEEDED state change, into the database under `dataDir`
 * (which nothing else may have open); returns the task's id.
 */
export function writeLongHistory(dataDir: string, events: number): string {
  const store = new TaskStore(dataDir);
  try {
    const id = `history-${events}`;
    const now = Date.now();
    store.insert(id, create(TaskSpecSchema, { prompt: `print ${events} lines` }), 1, now);
    const batch = 5_000;
    for (let from = 1; from <= events; from += batch) {
      const kinds: TaskEvent["kind"][] = [];
      for (let n = from; n < Math.min(from + batch, events + 1); n++) {
        const value = create(AgentOutputSchema, { type: "assistant", text: historyLine(n) });
        kinds.push({ case: "output", value });
      }
      store.appendEvents(id, kinds, now);
    }
    store.transition(id, [TaskState.QUEUED], { state: TaskState.SUCCEEDED, endTime: now });
    store.appendEvent(
      id,
      { case: "stateChange", value: create(StateChangeSchema, { state: TaskState.SUCCEEDED }) },
      now,
    );
    return id;
  } finally {
    store.close();
  }
}
