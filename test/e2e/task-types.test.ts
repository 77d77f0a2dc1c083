// Task types as plugins, end to end: custom types from a YAML file and from a module, and the
// built-in code_review, run by the real CLI against the fake model (which answers through the
// CLI's StructuredOutput tool, as a model does under --json-schema).
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Code } from "@connectrpc/connect";
import { afterAll, describe, expect, it } from "vitest";
import { ErrorKind, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { ROOT, scripted, spec, startService, testRuntimes, waitForEnd } from "../harness.ts";
import { failureOf } from "../rpc-errors.ts";
import { useConductor } from "./use-conductor.ts";

const dir = mkdtempSync(path.join(tmpdir(), "conductor-task-types-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const AUDIT = path.join(dir, "audit.yaml");
writeFileSync(
  AUDIT,
  `name: audit
description: checks a component against a standard
parameters:
  - { name: component, kind: string, required: true }
  - { name: depth, kind: integer, default: 2 }
  - { name: standard, kind: enum, values: [owasp, cis], default: owasp }
prompt: |
  Audit {{params.component}} against {{params.standard}}, {{params.depth}} levels deep.
  {{prompt}}
tools: [Read, Grep]
result_schema:
  type: object
  properties:
    passed: { type: boolean }
    problems: { type: array, items: { type: string } }
  required: [passed, problems]
  additionalProperties: false
`,
);

const TRANSLATE = path.join(dir, "translate.ts");
writeFileSync(
  TRANSLATE,
  `const type = {
  name: "translate",
  description: "translates documentation",
  parameters: [
    { name: "language", kind: "enum", values: ["fr", "de"], required: true },
    { name: "files", kind: "list" },
  ],
  prompt: ({ prompt, params }: { prompt: string; params: Record<string, unknown> }): string =>
    \`Translate into \${String(params["language"])} the files \${(params["files"] as string[] | undefined)?.join(" and ") ?? "all"}. \${prompt}\`,
  resultSchema: {
    type: "object",
    properties: { translated: { type: "integer", minimum: 0 } },
    required: ["translated"],
  },
};
export default type;
`,
);

/** A scripted answer through the CLI's StructuredOutput tool (what --json-schema offers). */
const answer = (input: Record<string, unknown>) => ({ tool: { name: "StructuredOutput", input } });

/** The main agent-loop requests the fake model got for the task whose prompt holds `marker`. */
function requestsWith(setup: ReturnType<typeof useConductor>, marker: string) {
  return setup.model.requests.filter(
    (r) => r.kind === "main" && JSON.stringify(r.body).includes(marker),
  );
}

const runtimes = testRuntimes().filter((r) => r === "process" || r === "docker");

describe.each(runtimes)("task types on the %s runtime", (runtime) => {
  const setup = useConductor(() => ({
    agents: 2,
    runtime,
    env: { CONDUCTOR_ORCHESTRATOR_TASK_TYPES: `${AUDIT},${TRANSLATE}` },
  }));

  it("a YAML type: checks its parameters, builds its prompt, delivers a structured answer, fails one off its schema", async () => {
    const { client } = setup.conductor;
    const bad = await failureOf(
      client.submitTask({ spec: spec({ prompt: "x", type: "audit", params: { depth: "3" } }) }),
    );
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.message).toBe('spec.params["component"] is required by type audit');
    const kind = await failureOf(
      client.submitTask({
        spec: spec({ prompt: "x", type: "audit", params: { component: "a", depth: "deep" } }),
      }),
    );
    expect(kind.code).toBe(Code.InvalidArgument);
    expect(kind.message).toMatch(/^spec\.params\["depth"\] of type audit must be an integer/);

    const marker = `audit-${runtime}-${Date.now()}`;
    const result = { passed: false, problems: ["passwords are logged"] };
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([answer(result)], `Mind ${marker}.`),
        type: "audit",
        params: { component: "login", standard: "cis" },
      }),
    });
    expect(task!.spec!.prompt).toMatch(/^Mind /); // stored as given
    const ended = await waitForEnd(client, task!.id);
    expect(TaskState[ended.state], ended.result?.error).toBe("SUCCEEDED");
    expect(ended.result!.structured).toEqual(result);
    // The model was told the prompt the template built, and offered the answer's schema.
    const [first] = requestsWith(setup, marker);
    const body = JSON.stringify(first!.body);
    expect(body).toContain(`Audit login against cis, 2 levels deep.\\nMind ${marker}.`);
    const tools = (first!.body as { tools: { name: string; input_schema: unknown }[] }).tools;
    expect(tools.find((t) => t.name === "StructuredOutput")?.input_schema).toMatchObject({
      required: ["passed", "problems"],
    });

    const { task: off } = await client.submitTask({
      spec: spec({
        prompt: scripted([answer({ passed: "yes" })], "Audit it."),
        type: "audit",
        params: { component: "login" },
      }),
    });
    const failed = await waitForEnd(client, off!.id);
    expect(TaskState[failed.state]).toBe("FAILED");
    expect(ErrorKind[failed.result!.errorKind]).toBe("CLI_ERROR");
    expect(failed.result!.error).toMatch(
      /^the answer does not match the result schema of the task's type: .*passed/,
    );
  });

  it("a module type: checks its parameters, builds its prompt, delivers a structured answer, fails one off its schema", async () => {
    const { client } = setup.conductor;
    const bad = await failureOf(
      client.submitTask({
        spec: spec({ prompt: "x", type: "translate", params: { language: "es" } }),
      }),
    );
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.message).toBe(
      'spec.params["language"] of type translate must be one of fr, de, got "es"',
    );
    const unknown = await failureOf(
      client.submitTask({
        spec: spec({ prompt: "x", type: "translate", params: { language: "fr", tone: "dry" } }),
      }),
    );
    expect(unknown.message).toBe(
      'spec.params["tone"] is not a parameter of type translate; it takes language, files',
    );

    const { task: good } = await client.submitTask({
      spec: spec({
        prompt: scripted([answer({ translated: 2 })], "Go."),
        type: "translate",
        params: { language: "fr" },
      }),
    });
    const done = await waitForEnd(client, good!.id);
    expect(TaskState[done.state], done.result?.error).toBe("SUCCEEDED");
    expect(done.result!.structured).toEqual({ translated: 2 });

    const marker = `translate-${runtime}-${Date.now()}`;
    const { task } = await client.submitTask({
      spec: spec({
        // Never a count: the CLI refuses each, then the agent gives up without an answer.
        prompt: scripted(
          [answer({ translated: "all" }), answer({ translated: -1 })],
          `Mind ${marker}.`,
        ),
        type: "translate",
        params: { language: "de", files: "README.md,docs/a.md" },
        maxAttempts: 2,
      }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(TaskState[ended.state]).toBe("FAILED");
    expect(ErrorKind[ended.result!.errorKind]).toBe("CLI_ERROR");
    expect(ended.result!.error).toMatch(
      /^the answer does not match the result schema of the task's type: the agent gave no structured answer; the CLI refused its last one: .*translated/,
    );
    expect(ended.result!.structured).toBeUndefined();
    expect(ended.attempts).toBe(2); // retried: another attempt may answer as asked
    const [first] = requestsWith(setup, marker);
    expect(JSON.stringify(first!.body)).toContain(
      `Translate into de the files README.md and docs/a.md. Mind ${marker}.`,
    );
  });

  it("an answer nested past what Conductor delivers fails its task, and the AgentHost goes on", async () => {
    const { client } = setup.conductor;
    // 200 levels: ~1 KB, within every size bound, past protobuf's recursion limit of 100.
    let deep: unknown = 1;
    for (let i = 0; i < 200; i++) deep = { a: deep };
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([answer({ translated: 1, deep })], "Go."),
        type: "translate",
        params: { language: "fr" },
        maxAttempts: 1,
      }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(TaskState[ended.state]).toBe("FAILED");
    expect(ended.result!.error).toMatch(/nested deeper than 24 levels/);
    // The AgentHost that read it still runs tasks.
    const { task: next } = await client.submitTask({
      spec: spec({
        prompt: scripted([answer({ translated: 3 })], "Go."),
        type: "translate",
        params: { language: "fr" },
      }),
    });
    const done = await waitForEnd(client, next!.id);
    expect(TaskState[done.state], done.result?.error).toBe("SUCCEEDED");
    expect(done.result!.structured).toEqual({ translated: 3 });
  });

  it("code_review: findings are delivered; an answer that is not findings fails the attempt", async () => {
    const { client } = setup.conductor;
    const findings = [
      { file: "src/a.ts", line: 12, severity: "error", message: "unchecked input" },
    ];
    const { task: good } = await client.submitTask({
      spec: spec({
        prompt: scripted([answer({ findings })], "Review it."),
        type: "code_review",
        params: { focus: "input validation" },
      }),
    });
    const done = await waitForEnd(client, good!.id);
    expect(TaskState[done.state], done.result?.error).toBe("SUCCEEDED");
    expect(done.result!.structured).toEqual({ findings });

    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([answer({ findings: "none found" })], "Review it."),
        type: "code_review",
      }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(TaskState[ended.state]).toBe("FAILED");
    expect(ErrorKind[ended.result!.errorKind]).toBe("CLI_ERROR");
    expect(ended.result!.error).toMatch(
      /^the answer does not match the result schema of the task's type: the agent gave no structured answer; the CLI refused its last one: .*findings/,
    );
  });

  if (runtime !== "process") return;

  it("conductor types lists every type with its parameters", async () => {
    const env = { CONDUCTOR_SOCKET: path.join(setup.conductor.socketDir, "orchestrator.sock") };
    const text = await run(["types"], env);
    expect(text).toMatch(/^TYPE\s+TOOLS\s+PERMISSIONS\s+ANSWER\s+SOURCE$/m);
    expect(text).toMatch(/^audit\s+Read,Grep\s+\(agent's\)\s+structured\s+\S+audit\.yaml$/m);
    expect(text).toContain("    --param component=STRING  (required)");
    expect(text).toContain("    --param standard=owasp|cis  (default owasp)");
    expect(text).toMatch(
      /^translate\s+\(agent's\)\s+\(agent's\)\s+structured\s+\S+translate\.ts$/m,
    );
    expect(text).toMatch(/^code_review\s+Read,Glob,Grep,LS\s+default\s+structured\s+builtin$/m);
    expect(text).toMatch(/^generic\s+\(agent's\)\s+\(agent's\)\s+text\s+builtin$/m);
    const json = (await run(["types", "--json"], env)).trim().split("\n");
    expect(json.map((l) => (JSON.parse(l) as { name: string }).name)).toEqual([
      "analysis",
      "audit",
      "code_review",
      "generic",
      "refactor",
      "test_generation",
      "translate",
    ]);
  });

  it("a type file that is wrong stops the Orchestrator at start, naming the file and the problem", async () => {
    const bad = path.join(dir, "bad.yaml");
    writeFileSync(bad, "name: bad\nprompt: 'Check {{params.nope}}'\n");
    const own = path.join(dir, "own");
    const start = startService(
      "orchestrator",
      ["--socket-dir", path.join(own, "run"), "--data-dir", path.join(own, "data")],
      {
        CONDUCTOR_ORCHESTRATOR_TASK_TYPES: bad,
        CONDUCTOR_OBSERVABILITY_METRICS_PORT: "0",
      },
    );
    await expect(start).rejects.toThrow(
      `task type file ${bad}: prompt: {{params.nope}} names no declared parameter`,
    );
  });
});

/** Runs the real `conductor` binary; resolves with its stdout, rejects when it fails. */
function run(args: string[], env: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [path.join(ROOT, "bin", "conductor.js"), ...args],
      { env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ...env } },
      (error, stdout, stderr) =>
        error ? reject(new Error(stderr || error.message)) : resolve(stdout),
    );
  });
}
