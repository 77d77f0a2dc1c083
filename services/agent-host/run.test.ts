import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ErrorKind,
  TaskSpecSchema,
  TaskState,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { execProcess, markedPids } from "../../plugins/runtime-process/exec.ts";
import { CLAUDE_BIN } from "../../test/fake-model/cli.ts";
import { startFakeModel, type FakeModel } from "../../test/fake-model/server.ts";
import { scripted } from "../../test/harness.ts";
import { compileResultSchema } from "../shared/result-schema.ts";
import { claudeArgv, runClaude, type RunSettings } from "./run.ts";
import { apiErrorKind } from "./runs.ts";

/** The real CLI, run as a plain local process against the fake model. */
describe("runClaude", () => {
  let model: FakeModel;
  let dir: string;
  beforeAll(async () => {
    model = await startFakeModel();
    dir = mkdtempSync(path.join(tmpdir(), "conductor-run-test-"));
  });
  afterAll(async () => {
    await model.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const settings = (over: Partial<RunSettings> = {}): RunSettings => ({
    claudePath: CLAUDE_BIN,
    model: "",
    permissionMode: "acceptEdits",
    allowedTools: ["Read"],
    idleTimeoutMs: 30_000,
    resultGraceMs: 5_000,
    defaultTimeoutMs: 60_000,
    apiKey: "sk-test",
    baseUrl: model.url,
    maxApiRetries: 0,
    ...over,
  });
  const run = (spec: TaskSpec, s = settings(), resultSchema = "") =>
    runClaude({
      spec,
      resultSchema,
      settings: s,
      place: { agentId: "a", taskId: "t", workspace: dir, configDir: dir, agentDir: dir },
      exec: async (req) => execProcess(req, { sandboxed: false }),
      hostPath: process.env["PATH"] ?? "/usr/bin:/bin",
      signal: new AbortController().signal,
      onOutput: () => undefined,
    });

  it("says so when its runtime killed the whole sandbox to end it (the AgentHost waits longer for that death)", async () => {
    const outcome = await runClaude({
      spec: create(TaskSpecSchema, { prompt: "hi" }),
      resultSchema: "",
      settings: settings({ claudePath: "/bin/false" }),
      place: { agentId: "a", taskId: "t", workspace: dir, configDir: dir, agentDir: dir },
      exec: async (req) => {
        const x = execProcess(req, { sandboxed: false });
        return { ...x, exited: x.exited.then((st) => ({ ...st, sandboxKilled: true })) };
      },
      hostPath: process.env["PATH"] ?? "/usr/bin:/bin",
      signal: new AbortController().signal,
      onOutput: () => undefined,
    });
    expect(outcome.state).toBe(TaskState.FAILED);
    expect(outcome.result.error).toMatch(/exited with code 1 without a result/);
    expect(outcome.sandboxKilled).toBe(true);
  });

  it("runs a prompt that starts with a dash: it is the prompt, not an option", async () => {
    const prompt = scripted([{ text: "fixed it" }], "- fix the failing test in foo.py");
    const spec = create(TaskSpecSchema, { prompt, allowedTools: ["Read", "Write"] });
    const argv = claudeArgv(spec, settings());
    expect(argv.slice(-2)).toEqual(["--", prompt]);
    const outcome = await run(spec);
    expect(outcome.result.error).toBe("");
    expect(outcome.state).toBe(TaskState.SUCCEEDED);
    expect(outcome.result.text).toBe("fixed it");
  });

  it("asks the CLI for a structured answer with --json-schema, and delivers it checked", async () => {
    const schema = { type: "object", properties: { n: { type: "integer" } }, required: ["n"] };
    const json = JSON.stringify(schema);
    const spec = create(TaskSpecSchema, {
      prompt: scripted([{ tool: { name: "StructuredOutput", input: { n: 7 } } }]),
    });
    expect(claudeArgv(spec, settings(), undefined, compileResultSchema(json)).slice(-3)).toEqual([
      `--json-schema=${json}`,
      "--",
      spec.prompt,
    ]);
    const outcome = await run(spec, settings(), json);
    expect(outcome.state, outcome.result.error).toBe(TaskState.SUCCEEDED);
    expect(outcome.result.structured).toEqual({ n: 7 });
    const refused = await run(spec, settings(), '{"type":"array"}');
    expect(refused.state).toBe(TaskState.FAILED);
    expect(refused.permanent).toBe(true);
    expect(refused.result.error).toMatch(/^the task's result schema cannot be used: .*"object"/);
  });

  it("ends the run at its result line when the CLI lingers after it, leaving nothing", async () => {
    // The real CLI, then a hang: neither its exit nor the result grace is waited for.
    const lingering = path.join(dir, "claude-then-hang");
    writeFileSync(lingering, `#!/bin/sh\n"${CLAUDE_BIN}" "$@"\nexec sleep 4733\n`);
    chmodSync(lingering, 0o755);
    let resultAt = 0;
    const told: unknown[] = [];
    const outcome = await runClaude({
      spec: create(TaskSpecSchema, { prompt: scripted([{ text: "all done" }]) }),
      settings: settings({ claudePath: lingering, resultGraceMs: 600_000 }),
      place: { agentId: "a", taskId: "lingers", workspace: dir, configDir: dir, agentDir: dir },
      exec: async (req) => execProcess(req, { sandboxed: false }),
      hostPath: process.env["PATH"] ?? "/usr/bin:/bin",
      signal: new AbortController().signal,
      onOutput: (o) => void (o.type === "result" && (resultAt = Date.now())),
      onResult: (o) => told.push(o),
    });
    expect(outcome.state, outcome.result.error).toBe(TaskState.SUCCEEDED);
    expect(outcome.result.text).toBe("all done");
    // The outcome was told at the result line, once, as the promise gives it.
    expect(told).toHaveLength(1);
    expect(told[0]).toBe(outcome);
    expect(Date.now() - resultAt).toBeLessThan(5_000);
    expect(await markedPids("CONDUCTOR_TASK_ID=lingers")).toEqual([]);
  });

  it("marks a run the CLI can never start as permanent: E2BIG, a missing CLI", async () => {
    // Submit refuses these; the AgentHost still classifies them if a spec gets through.
    const tooBig = await run(create(TaskSpecSchema, { prompt: "x", model: "m".repeat(200_000) }));
    expect(tooBig.state).toBe(TaskState.FAILED);
    expect(tooBig.result.error).toMatch(/E2BIG/);
    expect(tooBig.permanent).toBe(true);
    const missing = await run(
      create(TaskSpecSchema, { prompt: "x" }),
      settings({ claudePath: path.join(dir, "no-such-claude") }),
    );
    expect(missing.result.error).toMatch(/ENOENT/);
    expect(missing.permanent).toBe(true);
  });

  it("marks arguments the CLI refuses as permanent, and an ordinary failure as not", async () => {
    const refused = await run(
      create(TaskSpecSchema, { prompt: "x" }),
      settings({ extraArgs: ["--no-such-option"] }),
    );
    expect(refused.result.error).toMatch(/the CLI refused its arguments.*unknown option/s);
    expect(refused.permanent).toBe(true);
    const apiError = await run(
      create(TaskSpecSchema, {
        prompt: scripted([{ error: { status: 500, type: "api_error", message: "down" } }]),
      }),
    );
    expect(apiError.state).toBe(TaskState.FAILED);
    expect(apiError.permanent).toBeFalsy();
  });
});

describe("apiErrorKind", () => {
  it("takes a refused request as permanent, and limits, overloads and server errors as transient", () => {
    const kinds = [400, 401, 403, 404, 413, 408, 409, 429, 500, 502, 529].map(
      (s) => `${s} ${ErrorKind[apiErrorKind(s)]}`,
    );
    expect(kinds).toEqual([
      "400 INVALID_REQUEST",
      "401 INVALID_REQUEST",
      "403 INVALID_REQUEST",
      "404 INVALID_REQUEST",
      "413 INVALID_REQUEST",
      "408 API_ERROR",
      "409 API_ERROR",
      "429 API_ERROR",
      "500 API_ERROR",
      "502 API_ERROR",
      "529 API_ERROR",
    ]);
  });
});
