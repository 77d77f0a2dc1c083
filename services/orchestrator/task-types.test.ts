import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, describe, expect, it } from "vitest";
import { TaskSpecSchema } from "../../gen/conductor/v1/task_pb.js";
import { fromBinary, fromJson, toBinary, type JsonObject } from "@bufbuild/protobuf";
import { StructSchema } from "@bufbuild/protobuf/wkt";
import { compileResultSchema, MAX_ANSWER_DEPTH } from "../shared/result-schema.ts";
import { FINDINGS_SCHEMA } from "./builtin-types.ts";
import { loadTaskTypes, renderTemplate, taskTypeRegistry } from "./load-task-types.ts";
import type { TaskTypeRegistry } from "./task-types.ts";

const spec = (fields: MessageInitShape<typeof TaskSpecSchema>) => create(TaskSpecSchema, fields);
const dir = mkdtempSync(path.join(tmpdir(), "conductor-task-types-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** The INVALID_ARGUMENT message `run` throws. */
function refusal(run: () => unknown): string {
  try {
    run();
  } catch (e) {
    expect(e).toBeInstanceOf(ConnectError);
    expect((e as ConnectError).code).toBe(Code.InvalidArgument);
    return (e as ConnectError).rawMessage;
  }
  throw new Error("not refused");
}

const AUDIT_YAML = `
name: audit
description: checks a component against a standard
parameters:
  - name: component
    kind: string
    required: true
  - name: depth
    kind: integer
    default: 2
  - name: standard
    kind: enum
    values: [owasp, cis]
    default: owasp
  - name: files
    kind: list
  - name: strict
    kind: boolean
    default: false
prompt: |
  Audit {{params.component}} against {{params.standard}} to depth {{params.depth}}.
  {{#params.files}}Only these: {{params.files}}.{{/params.files}}
  {{#params.strict}}Be strict.{{/params.strict}}
  {{prompt}}
tools: [Read, Grep]
permission_mode: plan
result_schema:
  type: object
  properties:
    passed: { type: boolean }
  required: [passed]
`;

describe("the task type registry", () => {
  it("holds the built-ins; generic is the prompt as given, with the agent's defaults", () => {
    const types = taskTypeRegistry();
    expect(types.list().map((t) => t.type.name)).toEqual([
      "analysis",
      "code_review",
      "generic",
      "refactor",
      "test_generation",
    ]);
    const plain = spec({ prompt: "Say hello {{deps.x.result}}" });
    expect(types.prepare(plain)).toEqual({ spec: plain, resultSchema: "" });
    const review = types.prepare(
      spec({ prompt: "Look at auth.", type: "code_review", params: { focus: "secrets" } }),
    );
    expect(review.spec.prompt).toMatch(/Do not change any file\.\n\nLook at auth\.\n\n/);
    expect(review.spec.prompt).toContain("Focus above all on: secrets.");
    expect(review.spec.allowedTools).toEqual(["Read", "Glob", "Grep", "LS"]);
    expect(review.spec.permissionMode).toBe("default");
    expect(JSON.parse(review.resultSchema)).toEqual(FINDINGS_SCHEMA);
    // The spec's own tools and mode win over the type's.
    const own = types.prepare(
      spec({ prompt: "x", type: "refactor", allowedTools: ["Bash"], permissionMode: "plan" }),
    );
    expect(own.spec.allowedTools).toEqual(["Bash"]);
    expect(own.spec.permissionMode).toBe("plan");
    expect(own.spec.prompt).toContain("Keep its behaviour"); // keep_behaviour defaults to true
  });

  it("refuses an unknown type, naming the known ones", () => {
    expect(refusal(() => taskTypeRegistry().check(spec({ prompt: "x", type: "nope" }), 1000))).toBe(
      'spec.type "nope" is unknown; use one of analysis, code_review, generic, refactor, test_generation (conductor types lists them)',
    );
  });

  it("quotes at most a short prefix of a type it does not know", () => {
    const huge = "y".repeat(3_000_000);
    const message = refusal(() => taskTypeRegistry().check(spec({ prompt: "x", type: huge }), 1));
    expect(message).toMatch(/^spec\.type "y{64}"… \(3000000 bytes\) is unknown/);
    expect(message.length).toBeLessThan(400);
  });

  it("checks code_review's findings", () => {
    const s = compileResultSchema(FINDINGS_SCHEMA);
    const finding = { file: "a.ts", line: 3, severity: "error", message: "leak" };
    expect(s.mismatch({ findings: [finding] })).toBeUndefined();
    expect(s.mismatch({ findings: [] })).toBeUndefined();
    expect(s.mismatch({ findings: [{ ...finding, severity: "fatal" }] })).toMatch(
      /^findings\.0\.severity: /,
    );
    expect(s.mismatch({ findings: [{ ...finding, line: "3" }] })).toMatch(/findings\.0\.line/);
    expect(s.mismatch({ findings: "none" })).toMatch(/^findings: /);
    expect(s.mismatch({})).toMatch(/^findings: /);
  });

  it("refuses an answer nested deeper than the Orchestrator can decode", () => {
    const s = compileResultSchema({ type: "object" });
    const nest = (n: number) => {
      let v: unknown = 1;
      for (let i = 0; i < n; i++) v = { a: v };
      return v;
    };
    expect(s.mismatch(nest(MAX_ANSWER_DEPTH))).toBeUndefined();
    expect(s.mismatch(nest(60))).toBe(
      `(the answer): nested deeper than ${MAX_ANSWER_DEPTH} levels, the most Conductor delivers`,
    );
    // What passes decodes: as a Struct, within protobuf-es's recursion limit.
    const struct = fromJson(StructSchema, nest(MAX_ANSWER_DEPTH) as JsonObject);
    const bytes = toBinary(StructSchema, struct);
    expect(() => fromBinary(StructSchema, bytes)).not.toThrow();
  });
});

describe("a declarative (YAML) task type", () => {
  let types: TaskTypeRegistry;
  it("loads after the built-ins", async () => {
    types = await loadTaskTypes([file("audit.yaml", AUDIT_YAML)]);
    const audit = types.get("audit")!;
    expect(audit.source).toBe(path.join(dir, "audit.yaml"));
    expect(audit.type.parameters?.find((p) => p.name === "depth")?.default).toBe("2");
  });

  it("builds its prompt from the template, with defaults, sections and lists", () => {
    const built = types.prepare(
      spec({
        prompt: "Mind {{params.depth}} in here.",
        type: "audit",
        params: { component: "login", files: "a.ts, b.ts", strict: "true" },
      }),
    );
    // What the prompt holds is never read as a placeholder.
    expect(built.spec.prompt).toBe(
      "Audit login against owasp to depth 2.\nOnly these: a.ts, b.ts.\nBe strict.\nMind {{params.depth}} in here.",
    );
    expect(built.spec.allowedTools).toEqual(["Read", "Grep"]);
    expect(built.spec.permissionMode).toBe("plan");
    expect(JSON.parse(built.resultSchema)).toMatchObject({ required: ["passed"] });
    const bare = types.prepare(spec({ prompt: "Go.", type: "audit", params: { component: "x" } }));
    expect(bare.spec.prompt).toBe("Audit x against owasp to depth 2.\n\n\nGo.");
  });

  it("refuses bad parameters at submit, naming the parameter", () => {
    const check = (params: Record<string, string>) =>
      refusal(() => types.check(spec({ prompt: "x", type: "audit", params }), 100_000));
    expect(check({})).toBe('spec.params["component"] is required by type audit');
    expect(check({ component: "x", depth: "deep" })).toBe(
      'spec.params["depth"] of type audit must be an integer (decimal digits), got "deep"',
    );
    expect(check({ component: "x", standard: "iso" })).toMatch(
      /^spec\.params\["standard"\] of type audit must be one of owasp, cis, got "iso"$/,
    );
    expect(check({ component: "x", strict: "yes" })).toMatch(/"strict"\] .* "true" or "false"/);
    expect(check({ component: "x", files: "a,,b" })).toMatch(/"files"\] .* empty item/);
    expect(check({ component: "x", colour: "red" })).toBe(
      'spec.params["colour"] is not a parameter of type audit; it takes component, depth, standard, files, strict',
    );
    expect(refusal(() => types.check(spec({ prompt: "x", params: { a: "b" } }), 100_000))).toMatch(
      /^spec\.params\["a"\] is not a parameter of type generic; it takes none$/,
    );
    expect(
      refusal(() =>
        types.check(
          spec({ prompt: "x", type: "audit", params: { component: "y".repeat(5000) } }),
          1000,
        ),
      ),
    ).toMatch(/builds from spec\.prompt and spec\.params is 50\d\d bytes, over the limit of 1000/);
  });

  it("is refused at load with its file and the problem named", async () => {
    const cases: [string, RegExp][] = [
      ["name: x\nprompt: hi\ncolour: red\n", /unknown key "colour"/],
      [
        "name: x\nprompt: 'hi {{params.nope}}'\n",
        /\{\{params\.nope\}\} names no declared parameter/,
      ],
      [
        "name: x\nprompt: '{{#params.a}}open'\nparameters: [{name: a, kind: string}]\n",
        /never closed/,
      ],
      ["name: x\nprompt: hi\nresult_schema: {type: array}\n", /root must have "type": "object"/],
      [
        "name: x\nprompt: hi\nresult_schema: {type: object, properties: {a: {type: frob}}}\n",
        /not a JSON Schema .*frob/,
      ],
      ["name: code_review\nprompt: hi\n", /the name is taken by the type from builtin/],
      [
        "name: x\nprompt: hi\nparameters: [{name: a, kind: enum}]\n",
        /parameter a: an enum needs values/,
      ],
      [
        "name: x\nprompt: hi\nparameters: [{name: a, kind: integer, default: x}]\n",
        /parameter a: the default "x" must be an integer/,
      ],
      ["name: x\nprompt: hi\npermission_mode: yolo\n", /permission mode "yolo" is unknown/],
      ["name: x\nprompt: [hi\n", /is not valid YAML/],
    ];
    for (const [i, [yaml, message]] of cases.entries()) {
      const f = file(`bad-${i}.yaml`, yaml);
      await expect(loadTaskTypes([f]), yaml).rejects.toThrow(message);
      await expect(loadTaskTypes([f])).rejects.toThrow(f);
    }
    await expect(loadTaskTypes([path.join(dir, "missing.yml")])).rejects.toThrow(
      /task type file .*missing\.yml: cannot be read/,
    );
  });

  it("renders a template in one pass", () => {
    expect(
      renderTemplate("{{prompt}} / {{params.a}}", {
        prompt: "{{params.a}}",
        params: { a: "{{prompt}}" },
      }),
    ).toBe("{{params.a}} / {{prompt}}");
  });
});

describe("a task type from a module", () => {
  it("is its default export, registered like any other", async () => {
    const mod = file(
      "translate.mjs",
      `export default {
  name: "translate",
  description: "translates the docs",
  parameters: [{ name: "language", kind: "enum", values: ["fr", "de"], required: true }],
  prompt: ({ prompt, params }) => {
    if (params.language === "de" && prompt.includes("poem")) throw new Error("no poems in German");
    return "Translate into " + params.language + ": " + prompt;
  },
  tools: ["Read", "Write"],
  resultSchema: { type: "object", properties: { files: { type: "array", items: { type: "string" } } }, required: ["files"] },
};
`,
    );
    const types = await loadTaskTypes([mod]);
    const built = types.prepare(
      spec({ prompt: "the README", type: "translate", params: { language: "fr" } }),
    );
    expect(built.spec.prompt).toBe("Translate into fr: the README");
    expect(built.spec.allowedTools).toEqual(["Read", "Write"]);
    expect(built.spec.permissionMode).toBe("");
    expect(JSON.parse(built.resultSchema)).toMatchObject({ required: ["files"] });
    expect(
      refusal(() =>
        types.check(spec({ prompt: "a poem", type: "translate", params: { language: "de" } }), 1e5),
      ),
    ).toBe("spec.params: type translate refused them: no poems in German");
    const noDefault = file("empty.mjs", "export const x = 1;\n");
    await expect(loadTaskTypes([noDefault])).rejects.toThrow(/empty\.mjs: has no default export/);
    const badName = file("bad.mjs", 'export default { name: "Bad Name", prompt: () => "x" };\n');
    await expect(loadTaskTypes([badName])).rejects.toThrow(
      /task type "Bad Name" from .*bad\.mjs: name must be/,
    );
  });
});
