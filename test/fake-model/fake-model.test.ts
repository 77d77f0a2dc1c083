// Tests of the fake Anthropic Messages API: the script parser as pure functions, and
// end-to-end runs of the real Claude Code CLI against the fake (see also server.test.ts).
import { readFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { runClaude } from "./cli.ts";
import { DEFAULT_USAGE, extractScript, parseSteps, ScriptError } from "./script.ts";
import { startFakeModel, type FakeModel } from "./server.ts";

const script = (steps: unknown[]) => `<fake-script>${JSON.stringify(steps)}</fake-script>`;

describe("script parser", () => {
  it("finds no script in plain text", () => {
    expect(extractScript("just do the task")).toBeUndefined();
  });

  it("parses every step kind with modifiers", () => {
    const steps = extractScript(
      "Task.\n" +
        script([
          { write: { path: "a.txt", content: "A" }, usage: { input_tokens: 3, output_tokens: 4 } },
          { bash: "echo hi", delay_ms: 50 },
          { tool: { name: "mcp__conductor__request", input: { x: 1 } } },
          {
            id: "k",
            fail_times: 2,
            error: { status: 529, type: "overloaded_error", message: "m" },
            text: "ok",
          },
          { error: { status: 400, type: "invalid_request_error", message: "bad" } },
          { hang: true },
          { text: "bye" },
        ]) +
        "\ntrailing words",
    );
    expect(steps?.map((s) => s.action?.kind ?? null)).toEqual([
      "write",
      "bash",
      "tool",
      "text",
      null,
      null,
      "text",
    ]);
    expect(steps?.[0]?.usage).toEqual({ input_tokens: 3, output_tokens: 4 });
    expect(steps?.[1]).toMatchObject({ delayMs: 50, usage: DEFAULT_USAGE, hang: false });
    expect(steps?.[2]?.action).toEqual({
      kind: "tool",
      name: "mcp__conductor__request",
      input: { x: 1 },
    });
    expect(steps?.[3]).toMatchObject({ id: "k", failTimes: 2, error: { status: 529 } });
    expect(steps?.[5]?.hang).toBe(true);
  });

  it.each([
    ["not an array", { text: "x" }, /JSON array/],
    ["unknown key", [{ txt: "x" }], /unknown key "txt"/],
    ["two actions", [{ text: "x", bash: "y" }], /more than one/],
    ["no action", [{ delay_ms: 5 }], /needs one of/],
    [
      "fail_times without id",
      [{ fail_times: 1, error: { status: 500 }, text: "x" }],
      /needs "error" and "id"/,
    ],
    [
      "error plus action without fail_times",
      [{ error: { status: 500 }, text: "x" }],
      /needs fail_times/,
    ],
    ["status out of range", [{ error: { status: 200 } }], /400\.\.599/],
    ["negative delay", [{ text: "x", delay_ms: -1 }], /non-negative integer/],
    ["write without content", [{ write: { path: "a" } }], /write\.content/],
  ])("rejects %s", (_name, steps, message) => {
    expect(() => parseSteps(steps)).toThrow(ScriptError);
    expect(() => parseSteps(steps)).toThrow(message);
  });

  it("matches nested tags, so a step can carry a subagent's script", () => {
    const inner = script([{ text: "inner" }]);
    const steps = extractScript(
      `outer ${script([{ tool: { name: "Agent", input: { prompt: inner } } }])}`,
    );
    expect(steps?.[0]?.action).toEqual({ kind: "tool", name: "Agent", input: { prompt: inner } });
    expect(extractScript(inner)?.[0]?.action).toEqual({ kind: "text", text: "inner" });
  });

  it("rejects bad JSON and a missing close tag", () => {
    expect(() => extractScript("<fake-script>[{]</fake-script>")).toThrow(/not JSON/);
    expect(() => extractScript("<fake-script>[]")).toThrow(/without/);
    expect(() => extractScript("<fake-script>[<fake-script>]</fake-script>")).toThrow(/without/);
  });
});

describe("real claude CLI against the fake", () => {
  let fake: FakeModel;
  beforeEach(async () => {
    fake = await startFakeModel();
  });
  afterEach(async () => {
    await fake.close();
  });
  const mains = () => fake.requests.filter((r) => r.kind === "main");

  it("writes a file in its cwd and reports the scripted text and usage", async () => {
    await using run = await runClaude({
      fakeUrl: fake.url,
      prompt: `Write the file. ${script([
        {
          write: { path: "out.txt", content: "hello" },
          usage: { input_tokens: 100, output_tokens: 20 },
        },
        { text: "wrote it", usage: { input_tokens: 7, output_tokens: 3 } },
      ])}`,
      args: ["--permission-mode", "acceptEdits", "--allowedTools", "Write"],
    });
    expect(await readFile(path.join(run.cwd, "out.txt"), "utf8")).toBe("hello");
    expect(run.result).toMatchObject({
      type: "result",
      subtype: "success",
      is_error: false,
      result: "wrote it",
      num_turns: 2,
      usage: { input_tokens: 107, output_tokens: 23 },
    });
    expect(run.exitCode).toBe(0);
    expect(mains().map((r) => [r.step, r.status])).toEqual([
      [0, 200],
      [1, 200],
    ]);
    const init = run.lines[0]?.json;
    expect(init).toMatchObject({ type: "system", subtype: "init", cwd: run.cwd });
  });

  it("runs a Bash step", async () => {
    await using run = await runClaude({
      fakeUrl: fake.url,
      prompt: `Run it. ${script([{ bash: "echo hi > x.txt" }, { text: "ran" }])}`,
      args: ["--allowedTools", "Bash"],
    });
    expect(await readFile(path.join(run.cwd, "x.txt"), "utf8")).toBe("hi\n");
    expect(run.result).toMatchObject({ is_error: false, result: "ran" });
    const toolResult = run.lines.find((l) => l.json.type === "user")?.json;
    expect(toolResult).toMatchObject({
      message: { content: [{ type: "tool_result", is_error: false }] },
    });
  });

  it("fails fast with is_error and the message on a scripted HTTP 400", async () => {
    await using run = await runClaude({
      fakeUrl: fake.url,
      prompt: `Fail. ${script([
        { error: { status: 400, type: "invalid_request_error", message: "scripted boom" } },
      ])}`,
    });
    expect(run.result).toMatchObject({ is_error: true, api_error_status: 400 });
    expect(run.result?.result).toEqual(expect.stringContaining("scripted boom"));
    expect(run.exitCode).toBe(1);
    expect(run.exitedAt - run.startedAt).toBeLessThan(5_000);
    expect(mains().every((r) => r.status === 400)).toBe(true);
  });

  it("honours delay_ms", async () => {
    await using run = await runClaude({
      fakeUrl: fake.url,
      prompt: `Wait. ${script([{ text: "slow", delay_ms: 800 }])}`,
    });
    expect(run.result).toMatchObject({ is_error: false, result: "slow" });
    const [req] = mains();
    expect(req?.respondedAt).toBeDefined();
    expect((req?.respondedAt ?? 0) - (req?.receivedAt ?? 0)).toBeGreaterThanOrEqual(800);
    expect(run.exitedAt - run.startedAt).toBeGreaterThanOrEqual(800);
  });

  it("fails the first fail_times requests of a step, then succeeds", async () => {
    await using run = await runClaude({
      fakeUrl: fake.url,
      prompt: `Retry. ${script([
        {
          id: "flaky",
          fail_times: 2,
          error: { status: 529, type: "overloaded_error", message: "busy" },
          text: "recovered",
        },
      ])}`,
    });
    expect(run.result).toMatchObject({ is_error: false, result: "recovered" });
    expect(mains().map((r) => r.status)).toEqual([529, 529, 200]);
    const retries = run.lines.filter((l) => l.json.subtype === "api_retry");
    expect(retries).toHaveLength(2);
  });

  it("answers a subagent from the script in its own prompt, not the parent's", async () => {
    const child = `Sub task. ${script([{ text: "from sub" }])}`;
    await using run = await runClaude({
      fakeUrl: fake.url,
      prompt: `Delegate. ${script([
        {
          tool: {
            name: "Agent",
            input: {
              description: "sub task",
              prompt: child,
              subagent_type: "general-purpose",
              run_in_background: false,
            },
          },
        },
        { text: "parent done" },
      ])}`,
    });
    expect(run.result).toMatchObject({ is_error: false, result: "parent done" });
    const kinds = fake.requests.map((r) => [r.kind, r.step]);
    expect(kinds).toEqual([
      ["main", 0],
      ["subagent", 0],
      ["main", 1],
    ]);
    const handBack = run.lines.find(
      (l) => l.json.type === "user" && l.json.parent_tool_use_id === null,
    );
    expect(JSON.stringify(handBack?.json)).toContain("from sub");
  });
});
