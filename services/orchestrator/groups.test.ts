import { create } from "@bufbuild/protobuf";
import type { ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { TaskGroupSpecSchema } from "../../gen/conductor/v1/group_pb.js";
import { TaskSchema, TaskSpecSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { expandGroup, GROUP_LIMITS, linkMembers, reducePrompt } from "./groups.ts";

type Init = Parameters<typeof create<typeof TaskGroupSpecSchema>>[1];
const group = (init: Init) => create(TaskGroupSpecSchema, init);
const spec = (prompt: string, dependsOn: string[] = []) =>
  create(TaskSpecSchema, { prompt, dependsOn });
const refused = (init: Init) => {
  try {
    expandGroup(group(init));
  } catch (e) {
    return (e as ConnectError).rawMessage;
  }
  throw new Error("not refused");
};

describe("a group's members", () => {
  it("are the matrix's combinations, first parameter slowest, named by their values", () => {
    const members = expandGroup(
      group({
        template: create(TaskSpecSchema, {
          prompt: "Port {{repo}} to {{lang}}; {{deps.x.result}} stays",
          workspace: { kind: { case: "git", value: { repository: "/srv/{{repo}}.git" } } },
        }),
        matrix: [
          { name: "repo", values: ["api", "web"] },
          { name: "lang", values: ["ts", "go"] },
        ],
      }),
    );
    expect(members.map((m) => m.name)).toEqual(["api,ts", "api,go", "web,ts", "web,go"]);
    expect(members[1]!.spec.prompt).toBe("Port api to go; {{deps.x.result}} stays");
    const ws = members[2]!.spec.workspace!.kind;
    expect(ws.case === "git" && ws.value.repository).toBe("/srv/web.git");
  });

  it("are refused with the field named: both forms, none, too many, bad or repeated names", () => {
    const t = create(TaskSpecSchema, { prompt: "x" });
    expect(
      refused({
        members: [{ name: "a", spec: t }],
        template: t,
        matrix: [{ name: "p", values: ["1"] }],
      }),
    ).toMatch(/either spec.members or spec.template/);
    expect(refused({})).toMatch(/has no members/);
    const many = Array.from({ length: 40 }, (_, i) => String(i));
    expect(
      refused({
        template: t,
        matrix: [
          { name: "a", values: many },
          { name: "b", values: many },
        ],
      }),
    ).toBe(`spec.matrix makes over ${GROUP_LIMITS.members} members (the limit)`);
    expect(refused({ template: t, matrix: [{ name: "a", values: ["1", "1"] }] })).toMatch(
      /gives a value twice/,
    );
    expect(refused({ members: [{ name: "a b", spec: t }] })).toMatch(/is not a member name/);
    const unfilled = create(TaskSpecSchema, { prompt: "x {{q}}" });
    expect(refused({ template: unfilled, matrix: [{ name: "p", values: ["1"] }] })).toBe(
      "spec.template refers to {{q}}, which no matrix parameter fills (the matrix has p)",
    );
    expect(refused({ members: [{ name: "a", spec: t }], budget: { maxUsd: NaN } })).toMatch(
      /^spec\.budget\.max_usd must be from 0/,
    );
    expect(refused({ members: [{ name: "a", spec: t }], name: "x\u001b" })).toMatch(
      /control character/,
    );
    const tooMany = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, "v"]));
    expect(refused({ members: [{ name: "a", spec: t }], labels: tooMany })).toMatch(
      /over the limit of 64/,
    );
    expect(refused({ members: [{ name: "reduce", spec: t }] })).toMatch(/the reduce step's/);
    expect(
      refused({
        members: [
          { name: "a", spec: create(TaskSpecSchema, { prompt: "x", idempotencyKey: "k" }) },
        ],
      }),
    ).toMatch(/members have none of their own/);
    expect(refused({ members: [{ name: "a", spec: t }], maxParallel: -1 })).toMatch(/max_parallel/);
    const big99k = create(TaskSpecSchema, { prompt: "y {{v}}".repeat(14_000) });
    const values = Array.from({ length: 1000 }, (_, i) => String(i));
    expect(refused({ template: big99k, matrix: [{ name: "v", values }] })).toMatch(
      /^the group's members' specs are \d+ bytes in all, over the limit of 33554432/,
    );
    const long = create(TaskSpecSchema, { prompt: "x".repeat(100_000) });
    const big = Array.from({ length: 30 }, (_, i) => ({ name: `m${i}`, spec: long }));
    expect(refused({ members: big })).toMatch(
      /^the group spec is \d+ bytes, over the limit of 2097152/,
    );
  });

  it("name each other in depends_on and results, by task id once linked", () => {
    const linked = linkMembers([
      { name: "a", spec: spec("first") },
      { name: "b", spec: spec("after {{deps.a.result}}", ["a", "outside-id"]) },
    ]);
    const [a, b] = linked;
    expect(b!.spec.dependsOn).toEqual([a!.id, "outside-id"]);
    expect(b!.spec.prompt).toBe(`after {{deps.${a!.id}.result}}`);
    expect(() =>
      linkMembers([
        { name: "a", spec: spec("x", ["b"]) },
        { name: "b", spec: spec("x", ["a"]) },
      ]),
    ).toThrow(/cycle: a → b → a/);
    expect(() => linkMembers([{ name: "a", spec: spec("x", ["a"]) }])).toThrow(/cycle: a → a/);
  });
});

describe("a reduce step's prompt", () => {
  const member = (name: string, state: TaskState, text: string, error = "") =>
    create(TaskSchema, {
      member: name,
      state,
      result: { text, error },
    });

  it("holds each member's outcome where it says {{members}}, or after it", () => {
    const members = [
      member("a", TaskState.SUCCEEDED, "looks fine"),
      member("b", TaskState.FAILED, "", "the CLI ended in error"),
    ];
    expect(reducePrompt("Judge: {{members}} Done.", members)).toBe(
      "Judge: ## Member a: SUCCEEDED\nlooks fine\n\n## Member b: FAILED\nError: the CLI ended in error Done.",
    );
    expect(reducePrompt("Judge.", members)).toMatch(
      /^Judge\.\n\n# The members' outcomes\n\n## Member a/,
    );
  });

  it("shares its room between the members, cutting each long result", () => {
    const long = "x".repeat(200_000);
    const prompt = reducePrompt("{{members}}", [
      member("a", TaskState.SUCCEEDED, long),
      member("b", TaskState.SUCCEEDED, "short"),
    ]);
    expect(Buffer.byteLength(prompt)).toBeLessThanOrEqual(GROUP_LIMITS.outcomesBytes);
    expect(prompt).toContain("[… cut by conductor …]");
    expect(prompt).toContain("## Member b: SUCCEEDED\nshort");
  });
});
