// Tests of the fake's request reading (pure functions), its HTTP surface driven with fetch,
// and the runnable main.ts. The real-CLI tests are in fake-model.test.ts.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  classify,
  countFollowUps,
  countToolResults,
  resolveScriptPath,
  scriptOf,
  workingDirectory,
} from "./request.ts";
import { DEFAULT_USAGE } from "./script.ts";
import { startFakeModel, type FakeModel } from "./server.ts";

const script = (steps: unknown[]) => `<fake-script>${JSON.stringify(steps)}</fake-script>`;

describe("request reading", () => {
  const user = (...texts: string[]) => ({
    role: "user",
    content: texts.map((text) => ({ type: "text", text })),
  });
  const toolTurn = [
    { role: "assistant", content: [{ type: "tool_use", id: "t1", name: "Bash", input: {} }] },
    { role: "user", content: [{ type: "tool_result", tool_use_id: "t1", content: "x" }] },
  ];

  it("classifies by tools and the subagent marker", () => {
    expect(classify({ messages: [] })).toBe("side");
    expect(classify({ tools: [] })).toBe("side");
    expect(classify({ tools: [{ name: "Bash" }] })).toBe("main");
    const system = [{ type: "text", text: "x-anthropic-billing-header: cc_is_subagent=true;" }];
    expect(classify({ tools: [{ name: "Bash" }], system })).toBe("subagent");
  });

  it("counts tool results across messages", () => {
    expect(countToolResults({ messages: [user("hi")] })).toBe(0);
    expect(countToolResults({ messages: [user("hi"), ...toolTurn, ...toolTurn] })).toBe(2);
    // A resumed session's new prompt moves the script on; reminders do not.
    const resumed = {
      messages: [user("hi"), ...toolTurn, user("<system-reminder>x"), user("fix it")],
    };
    expect(countFollowUps(resumed)).toBe(1);
  });

  it("reads the script from the prompt, not from reminders or tool results", () => {
    const reminder = `<system-reminder>\nCLAUDE.md says ${script([{ text: "wrong" }])}\n</system-reminder>`;
    const body = { messages: [user(reminder, `go ${script([{ text: "right" }])}`), ...toolTurn] };
    expect(scriptOf(body)?.[0]?.action).toEqual({ kind: "text", text: "right" });
    expect(scriptOf({ messages: [user(reminder, "no script")] })).toBeUndefined();
    const inResult = [{ role: "user", content: [{ type: "tool_result", content: script([]) }] }];
    expect(scriptOf({ messages: [user("hi"), ...inResult] })).toBeUndefined();
  });

  it("finds the working directory in system, a system message or a reminder, the last one first", () => {
    const env =
      "# Environment\n - Primary working directory: /tmp/w 1\n - Is a git repository: false";
    expect(workingDirectory({ system: [{ type: "text", text: env }] })).toBe("/tmp/w 1");
    expect(workingDirectory({ messages: [user("hi"), { role: "system", content: env }] })).toBe(
      "/tmp/w 1",
    );
    expect(workingDirectory({ messages: [user(`<system-reminder>\n${env}`)] })).toBe("/tmp/w 1");
    expect(workingDirectory({ messages: [user("hi")] })).toBeUndefined();
    // Resumed in another folder (CLI 2.1.332): the last block names where it runs now.
    const moved = env.replace("/tmp/w 1", "/tmp/w 2 (was /tmp/w 1)");
    const resumed = [
      { role: "system", content: env },
      user("hi"),
      { role: "system", content: moved },
    ];
    expect(workingDirectory({ messages: resumed })).toBe("/tmp/w 2");
  });

  it("resolves write paths against the cwd", () => {
    expect(resolveScriptPath("/w", "out.txt")).toBe("/w/out.txt");
    expect(resolveScriptPath("/w", "/abs/x")).toBe("/abs/x");
  });
});

describe("fake server over HTTP", () => {
  let fake: FakeModel;
  beforeEach(async () => {
    fake = await startFakeModel();
  });
  afterEach(async () => {
    await fake.close();
  });

  const post = (body: unknown, p = "/v1/messages") =>
    fetch(fake.url + p, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  const mainBody = (prompt: string, stream = false) => ({
    model: "claude-test",
    stream,
    tools: [{ name: "Write" }],
    messages: [{ role: "user", content: [{ type: "text", text: prompt }] }],
  });

  it("answers without a script with ok, non-streaming, in the Messages shape", async () => {
    const res = await post(mainBody("hello"));
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      type: "message",
      role: "assistant",
      model: "claude-test",
      content: [{ type: "text", text: "ok" }],
      stop_reason: "end_turn",
      usage: {
        input_tokens: DEFAULT_USAGE.input_tokens,
        output_tokens: DEFAULT_USAGE.output_tokens,
      },
    });
    expect(fake.requests[0]).toMatchObject({ method: "POST", kind: "main", status: 200 });
  });

  it("streams a tool_use as SSE with input_json_delta and stop_reason tool_use", async () => {
    const prompt = script([{ bash: "echo hi" }]);
    const text = await (await post(mainBody(prompt, true))).text();
    const events = text
      .split("\n")
      .filter((l) => l.startsWith("data: "))
      .map((l) => JSON.parse(l.slice(6)) as { type: string; [k: string]: unknown });
    expect(events.map((e) => e.type)).toEqual([
      "message_start",
      "ping",
      "content_block_start",
      "content_block_delta",
      "content_block_stop",
      "message_delta",
      "message_stop",
    ]);
    expect(events[2]).toMatchObject({
      content_block: { type: "tool_use", name: "Bash", input: {} },
    });
    const delta = events[3] as unknown as { delta: { type: string; partial_json: string } };
    expect(delta.delta.type).toBe("input_json_delta");
    expect(JSON.parse(delta.delta.partial_json)).toEqual({
      command: "echo hi",
      description: "Run scripted command",
    });
    expect(events[5]).toMatchObject({ delta: { stop_reason: "tool_use" } });
  });

  it("gives side calls short text without spending fail_times", async () => {
    const prompt = script([
      {
        id: "f",
        fail_times: 1,
        error: { status: 500, type: "api_error", message: "x" },
        text: "fine",
      },
    ]);
    const side = await post({ model: "m", messages: mainBody(prompt).messages });
    expect(await side.json()).toMatchObject({ content: [{ type: "text", text: "ok" }] });
    expect((await post(mainBody(prompt))).status).toBe(500);
    expect(await (await post(mainBody(prompt))).json()).toMatchObject({
      content: [{ text: "fine" }],
    });
  });

  it("answers a bad script, count_tokens, HEAD and unknown routes", async () => {
    const bad = await post(mainBody('<fake-script>[{"nope":1}]</fake-script>'));
    expect(bad.status).toBe(400);
    const badBody = (await bad.json()) as {
      type: string;
      error: { type: string; message: string };
    };
    expect(badBody).toMatchObject({ type: "error", error: { type: "invalid_request_error" } });
    expect(badBody.error.message).toMatch(/unknown key/);
    const count = await post(mainBody("hi"), "/v1/messages/count_tokens");
    const counted = (await count.json()) as { input_tokens: unknown };
    expect(typeof counted.input_tokens).toBe("number");
    expect((await fetch(fake.url, { method: "HEAD" })).status).toBe(200);
    expect((await post({}, "/v1/nothing")).status).toBe(404);
  });

  it("holds a hanging request until close, and closes promptly", async () => {
    const pending = post(mainBody(script([{ hang: true }]))).catch((e: unknown) => e);
    await fake.waitFor((r) => r.kind === "main");
    const t0 = Date.now();
    await fake.close();
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(await pending).toBeInstanceOf(Error);
    expect(fake.requests[0]?.respondedAt).toBeUndefined();
  });
});

describe("main.ts", () => {
  it("prints its url as one JSON line and exits 0 on SIGTERM", async () => {
    const main = new URL("./main.ts", import.meta.url).pathname;
    const child = spawn(process.execPath, [main], { stdio: ["ignore", "pipe", "inherit"] });
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    const lines = createInterface({ input: child.stdout });
    const [first] = await lines[Symbol.asyncIterator]()
      .next()
      .then((r) => [r.value as string]);
    const { url } = JSON.parse(first ?? "{}") as { url: string };
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect((await fetch(url, { method: "HEAD" })).status).toBe(200);
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });
});
