/**
 * The stream-json reader against what the installed Claude Code CLI really prints: a tool call
 * its permission mode denies must reach the result with its input and the CLI's reason.
 */
import { describe, expect, it } from "vitest";
import { runClaude } from "../../test/fake-model/cli.ts";
import { startFakeModel } from "../../test/fake-model/server.ts";
import { create, toBinary, type JsonObject } from "@bufbuild/protobuf";
import { RunOutcomeSchema } from "../../gen/conductor/v1/agent_host_pb.js";
import { ErrorKind, TaskResultSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { compileResultSchema } from "../shared/result-schema.ts";
import { sendable } from "./routes.ts";
import { checkStructured, verdictOf } from "./run.ts";
import {
  MAX_DENIED_CALLS,
  MAX_DENIED_INPUT_CHARS,
  STRUCTURED_OUTPUT_TOOL,
  StreamJsonReader,
} from "./stream-json.ts";

describe("StreamJsonReader", () => {
  it("lists the tool calls the real CLI denied, with input and reason, and only those", async () => {
    await using fake = await startFakeModel();
    await using run = await runClaude({
      fakeUrl: fake.url,
      prompt: `Work. <fake-script>${JSON.stringify([
        { bash: "echo hi > b.txt" },
        { write: { path: "w.txt", content: "written" } },
        { bash: "echo allowed-output" },
        { text: "done" },
      ])}</fake-script>`,
      // Only `echo allowed-output` may run: the redirect and the Write need approval.
      args: ["--permission-mode", "default", "--allowedTools", "Bash(echo allowed-output)"],
    });
    const reader = new StreamJsonReader();
    const outputs = run.lines.map((l) => reader.read(JSON.stringify(l.json)));
    const result = outputs.find((p) => p.result)?.result;

    expect(result?.isError).toBe(false);
    expect(result?.text).toBe("done");
    const denied = result!.deniedToolCalls;
    expect(denied.map((d) => d.name)).toEqual(["Bash", "Write"]);
    expect(JSON.parse(denied[0]!.inputJson)).toMatchObject({ command: "echo hi > b.txt" });
    expect(JSON.parse(denied[1]!.inputJson)).toMatchObject({ content: "written" });
    for (const d of denied) {
      expect(d.id).toMatch(/^toolu_/);
      expect(d.denial.length).toBeGreaterThan(10);
    }
    expect(denied[0]!.denial).toMatch(/b\.txt/);
    // Each denial is also marked on the line where it happened, with the call's input.
    const marked = outputs.flatMap((p) => p.output.deniedToolCalls);
    expect(marked.map((d) => [d.id, d.inputJson])).toEqual(denied.map((d) => [d.id, d.inputJson]));
  });

  it("keeps the first denials and cuts long inputs, so a result stays small", () => {
    const reader = new StreamJsonReader();
    const big = "x".repeat(MAX_DENIED_INPUT_CHARS * 3);
    for (let i = 0; i < MAX_DENIED_CALLS + 5; i++) {
      reader.read(
        JSON.stringify({
          type: "assistant",
          message: { content: [{ type: "tool_use", id: `t${i}`, name: "Write", input: { big } }] },
        }),
      );
      reader.read(
        JSON.stringify({
          type: "system",
          subtype: "permission_denied",
          tool_name: "Write",
          tool_use_id: `t${i}`,
          message: `no ${i}`,
        }),
      );
    }
    const { result } = reader.read(
      JSON.stringify({
        type: "result",
        subtype: "success",
        is_error: false,
        result: "ok",
        // Malformed entries are skipped, known ones completed, new ones past the bound dropped.
        permission_denials: [
          null,
          7,
          { tool_name: "Write", tool_use_id: "t0" },
          { tool_use_id: "x" },
        ],
      }),
    );
    const denied = result!.deniedToolCalls;
    expect(denied).toHaveLength(MAX_DENIED_CALLS);
    expect(denied[0]!.denial).toBe("no 0");
    expect(denied.at(-1)!.id).toBe(`t${MAX_DENIED_CALLS - 1}`);
    expect(denied[0]!.inputJson).toHaveLength(MAX_DENIED_INPUT_CHARS);
    expect(denied[0]!.inputJson.endsWith("…")).toBe(true);
  });
});

describe("a run with a result schema", () => {
  const schema = compileResultSchema({
    type: "object",
    properties: { n: { type: "integer" } },
    required: ["n"],
  });
  const resultLine = (extra: Record<string, unknown>) =>
    JSON.stringify({ type: "result", subtype: "success", is_error: false, result: "", ...extra });

  it("takes the CLI's structured_output into the result, and passes one that matches", () => {
    const reader = new StreamJsonReader();
    const { result } = reader.read(resultLine({ structured_output: { n: 3 } }));
    expect(result!.structured).toEqual({ n: 3 });
    checkStructured(result!, schema, reader.refusal);
    expect(result!.isError).toBe(false);
    expect(result!.structured).toEqual({ n: 3 });
  });

  it("fails a result without an answer, saying why the CLI refused the agent's last one", () => {
    const reader = new StreamJsonReader();
    const call = { type: "tool_use", id: "toolu_1", name: STRUCTURED_OUTPUT_TOOL, input: {} };
    reader.read(JSON.stringify({ type: "assistant", message: { content: [call] } }));
    const refusal = {
      type: "tool_result",
      tool_use_id: "toolu_1",
      is_error: true,
      content: "Output does not match required schema: root: must have required property 'n'",
    };
    reader.read(JSON.stringify({ type: "user", message: { content: [refusal] } }));
    const { result } = reader.read(resultLine({ result: "done" }));
    checkStructured(result!, schema, reader.refusal);
    expect(result!.isError).toBe(true);
    expect(ErrorKind[result!.errorKind]).toBe("CLI_ERROR");
    expect(result!.error).toBe(
      "the answer does not match the result schema of the task's type: the agent gave no structured answer; the CLI refused its last one: Output does not match required schema: root: must have required property 'n'",
    );
  });

  it("fails an answer that does not match, naming where", () => {
    const { result } = new StreamJsonReader().read(resultLine({ structured_output: { n: "3" } }));
    checkStructured(result!, schema, "");
    expect(result!.isError).toBe(true);
    expect(result!.error).toMatch(/^the answer does not match .*: n: /);
    expect(result!.structured).toBeUndefined();
  });

  it("fails an answer nested too deeply to measure or send, and reads a tool call as deep, without throwing", () => {
    const nested = (n: number) => `${'{"a":'.repeat(n)}1${"}".repeat(n)}`;
    for (const levels of [200, 20_000]) {
      const line = `{"type":"result","subtype":"success","is_error":false,"result":"","structured_output":{"n":3,"deep":${nested(levels)}}}`;
      const { result } = new StreamJsonReader().read(line);
      expect(() => checkStructured(result!, schema, "")).not.toThrow();
      expect(result!.error).toMatch(/nested deeper than 24 levels/);
      expect(result!.structured).toBeUndefined();
    }
    const call = `{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"Bash","input":${nested(20_000)}}]}}`;
    const { output } = new StreamJsonReader().read(call);
    const shown = JSON.parse(output.toolCalls[0]!.inputJson) as { not_shown: string };
    expect(shown.not_shown).toMatch(/could not be written as JSON: RangeError/);
  });

  it("fails an answer under the bound as JSON but over it as the protobuf it is sent as", () => {
    // 200,000 zeros: 400 KB of JSON, 2.2 MB as google.protobuf.Struct (11 bytes a number).
    const zeros = new Array<number>(200_000).fill(0);
    const { result } = new StreamJsonReader().read(
      resultLine({ structured_output: { n: 3, zeros } }),
    );
    checkStructured(result!, schema, "");
    expect(result!.isError).toBe(true);
    expect(result!.error).toMatch(/over 1048576 bytes as protobuf \(22\d{5} bytes\)$/);
    expect(result!.structured).toBeUndefined();
    // A tenth of it is kept whole.
    const small = new StreamJsonReader().read(
      resultLine({ structured_output: { n: 3, zeros: zeros.slice(0, 20_000) } }),
    ).result!;
    checkStructured(small, schema, "");
    expect(small.isError).toBe(false);
    expect((small.structured!["zeros"] as number[]).length).toBe(20_000);
  });
});

describe("a result line an agent could have written", () => {
  it("puts numbers into the result as its fields can hold them", () => {
    const line = JSON.stringify({
      type: "result",
      subtype: "success",
      is_error: false,
      result: "done",
      num_turns: 1e300,
      duration_ms: 1e300,
      total_cost_usd: -5,
      usage: { input_tokens: 1e300, output_tokens: -1, cache_read_input_tokens: "7" },
    });
    const { result } = new StreamJsonReader().read(line);
    expect(result!.numTurns).toBe(2 ** 31 - 1);
    expect(result!.durationMs).toBe(BigInt(Number.MAX_SAFE_INTEGER));
    expect(result!.costUsd).toBe(0);
    expect(result!.usage!.inputTokens).toBe(BigInt(Number.MAX_SAFE_INTEGER));
    expect(result!.usage!.outputTokens).toBe(0n);
    expect(result!.usage!.cacheReadInputTokens).toBe(0n);
    expect(() => toBinary(TaskResultSchema, result!)).not.toThrow();
  });

  it("keeps no structured answer a task without a schema asked for", () => {
    const line = JSON.stringify({
      type: "result",
      subtype: "success",
      is_error: false,
      result: "done",
      structured_output: { n: 1 },
    });
    const { result } = new StreamJsonReader().read(line);
    expect(verdictOf(result!, undefined, "").result.structured).toBeUndefined();
  });

  it("replaces a result protobuf cannot encode by a failure saying why, the run's own", () => {
    let deep: JsonObject = { a: 1 };
    for (let i = 0; i < 300; i++) deep = { a: deep };
    const outcome = create(RunOutcomeSchema, {
      state: TaskState.SUCCEEDED,
      result: create(TaskResultSchema, {
        text: "done",
        structured: deep,
        durationMs: 5n,
        costUsd: 0.25,
        usage: { inputTokens: 10n, outputTokens: 2n },
      }),
    });
    sendable(outcome);
    expect(outcome.state).toBe(TaskState.FAILED);
    expect(outcome.result!.errorKind).toBe(ErrorKind.CLI_ERROR);
    expect(outcome.result!.error).toMatch(/^the run's result could not be sent: .*recursion/);
    // What it spent still counts.
    expect(outcome.result!.costUsd).toBe(0.25);
    expect(outcome.result!.usage?.inputTokens).toBe(10n);
    expect(() => toBinary(RunOutcomeSchema, outcome)).not.toThrow();
  });
});
