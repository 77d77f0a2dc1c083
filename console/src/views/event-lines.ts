// A task's events as the lines `conductor watch` prints (services/cli/task-text.ts), each
// with the kind of thing it says, for the event log to style.
import type { TaskEvent } from "../../../gen/conductor/v1/task_pb.js";
import { eventText } from "../../../services/cli/task-text.ts";

/** One line of the log. */
export interface EventLine {
  seq: bigint;
  kind: "state" | "text" | "tool" | "denied" | "notice" | "result";
  text: string;
}

/** The lines of one event (none for the stream lines `watch` says nothing about). */
export function eventLines(e: TaskEvent): EventLine[] {
  const lines: EventLine[] = [];
  const base =
    e.kind.case === "stateChange" ? "state" : e.kind.case === "result" ? "result" : "text";
  for (const block of eventText(e)) {
    const kind: EventLine["kind"] =
      base !== "text"
        ? base
        : block.startsWith("  → ")
          ? "tool"
          : block.startsWith("  ✗")
            ? "denied"
            : block.startsWith("  ! ")
              ? "notice"
              : "text";
    for (const text of block.split("\n")) lines.push({ seq: e.seq, kind, text });
  }
  return lines;
}
