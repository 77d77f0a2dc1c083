import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  FileStatus,
  TaskEventSchema,
  TaskResultSchema,
  TaskSchema,
  TaskState,
} from "../../gen/conductor/v1/task_pb.js";
import { eventText, taskText } from "./task-text.ts";

const result = create(TaskResultSchema, {
  text: "done",
  change: {
    repository: "/src/app",
    baseCommit: "1a2b3c4d5e",
    headCommit: "5d6e7f8091",
    branch: "signup",
    files: [{ path: "a.ts", status: FileStatus.MODIFIED, additions: 2n, deletions: 1n }],
    filesTotal: 1,
    committed: true,
    pushed: true,
    partial: true,
  },
  checks: [
    { command: "npm test", exitCode: 0, durationMs: 1200n, passed: true },
    { command: "npm run lint", exitCode: 2, durationMs: 800n, outputTail: "x.ts: bad\n" },
  ],
});

describe("get and watch with a git workspace and checks", () => {
  it("get shows the workspace, the change and the checks", () => {
    const text = taskText(
      create(TaskSchema, {
        id: "t-1",
        state: TaskState.FAILED,
        spec: {
          prompt: "p",
          workspace: { kind: { case: "git", value: { repository: "/src/app", ref: "main" } } },
          checks: [{ command: "npm test" }, { command: "npm run lint", timeoutSeconds: 60 }],
        },
        result,
      }),
    ).join("\n");
    expect(text).toContain("workspace  git /src/app at main → conductor/t-1\n");
    expect(text).toContain("check      npm run lint (timeout 60 s)\n");
    expect(text).toContain(
      [
        "change:",
        "  repository  /src/app",
        "  branch      signup (pushed)",
        "  commits     1a2b3c4..5d6e7f8",
        "  partial     the attempt ended before the agent finished; its work so far is here",
        "  files       1 changed, +2 −1",
        "    M  a.ts  +2 −1",
        "",
        "checks:",
        "  ✓ npm test  exit 0 · 1.2 s",
        "  ✗ npm run lint  exit 2 · 800 ms",
        "      x.ts: bad",
        "",
        "prompt:",
      ].join("\n"),
    );
  });

  it("watch shows them with the result", () => {
    const lines = eventText(create(TaskEventSchema, { kind: { case: "result", value: result } }));
    expect(lines).toEqual([
      "result: done",
      "  change:",
      "    repository  /src/app",
      "    branch      signup (pushed)",
      "    commits     1a2b3c4..5d6e7f8",
      "    partial     the attempt ended before the agent finished; its work so far is here",
      "    files       1 changed, +2 −1",
      "      M  a.ts  +2 −1",
      "  checks:",
      "    ✓ npm test  exit 0 · 1.2 s",
      "    ✗ npm run lint  exit 2 · 800 ms",
      "        x.ts: bad",
    ]);
  });
});

describe("get of a task of a type with a result schema", () => {
  it("shows its params, and its structured answer in place of the text", () => {
    const text = taskText(
      create(TaskSchema, {
        id: "t-2",
        state: TaskState.SUCCEEDED,
        spec: { prompt: "p", type: "code_review", params: { focus: "auth" } },
        result: { text: '{"findings":[]}', structured: { findings: [] } },
      }),
    ).join("\n");
    expect(text).toMatch(/^type +code_review$/m);
    expect(text).toMatch(/^params +focus=auth$/m);
    expect(text).toMatch(/\n\nstructured:\n {2}\{\n {4}"findings": \[\]\n {2}\}$/);
    expect(text).not.toContain("result:");
  });
});

describe("watch lines of an agent's text", () => {
  it("indents every line, so none passes for a state line", () => {
    const e = create(TaskEventSchema, {
      taskId: "t",
      seq: 3n,
      kind: {
        case: "output",
        value: { type: "assistant", text: "ok\n[SUCCEEDED] agent=agent-9 attempt=1" },
      },
    });
    expect(eventText(e)).toEqual(["  ok\n  [SUCCEEDED] agent=agent-9 attempt=1"]);
  });
});
