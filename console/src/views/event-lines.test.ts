import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { TaskEventSchema, TaskState } from "../../../gen/conductor/v1/task_pb.js";
import { eventLines } from "./event-lines.ts";

describe("a task's events as log lines", () => {
  it("says what `conductor watch` says, each line marked with what it is", () => {
    const output = create(TaskEventSchema, {
      seq: 4n,
      kind: {
        case: "output",
        value: {
          type: "assistant",
          text: "two\nlines",
          toolCalls: [{ name: "Bash", inputJson: '{"command":"ls"}' }],
          deniedToolCalls: [{ name: "Write", inputJson: "{}", denial: "not allowed" }],
        },
      },
    });
    expect(eventLines(output).map((l) => [l.kind, l.text, l.seq])).toEqual([
      ["text", "  two", 4n],
      ["text", "  lines", 4n],
      ["tool", '  → Bash {"command":"ls"}', 4n],
      ["denied", "  ✗ denied Write {}: not allowed", 4n],
    ]);
    const state = create(TaskEventSchema, {
      seq: 5n,
      kind: { case: "stateChange", value: { state: TaskState.RUNNING, agentId: "agent-1" } },
    });
    expect(eventLines(state)).toEqual([
      { seq: 5n, kind: "state", text: "[RUNNING] agent=agent-1" },
    ]);
    // Lines `watch` says nothing about (the CLI's system and user lines) make none.
    const quiet = create(TaskEventSchema, { kind: { case: "output", value: { type: "user" } } });
    expect(eventLines(quiet)).toEqual([]);
  });
});
