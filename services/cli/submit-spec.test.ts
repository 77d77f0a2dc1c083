import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { toJson } from "@bufbuild/protobuf";
import { afterAll, describe, expect, it } from "vitest";
import { TaskSpecSchema } from "../../gen/conductor/v1/task_pb.js";
import { parseCommandLine, UsageError } from "./args.ts";
import { COMMANDS } from "./commands.ts";
import { taskSpecOf } from "./submit-spec.ts";
import { repositoryOf } from "./workspace-flags.ts";

const from = { cwd: "/work/here", home: "/home/ada", readStdin: () => "from stdin" };

/** The spec `conductor submit ARGV…` sends, as JSON. */
function spec(...argv: string[]) {
  const parsed = parseCommandLine(["submit", ...argv], COMMANDS)!;
  return toJson(TaskSpecSchema, taskSpecOf(parsed, from)) as Record<string, unknown>;
}

const dir = mkdtempSync(path.join(tmpdir(), "conductor-submit-spec-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A file in the test's temp folder. */
function file(name: string, text: string): string {
  const f = path.join(dir, name);
  writeFileSync(f, text);
  return f;
}

describe("repositoryOf", () => {
  const base = { cwd: "/work/here", home: "/home/ada" };
  it.each([
    ["app", "/work/here/app"],
    ["../app/", "/work/app"],
    [".", "/work/here"],
    ["~", "/home/ada"],
    ["~/src/app", "/home/ada/src/app"],
    ["/srv/git/app.git", "/srv/git/app.git"],
    ["./a:b", "/work/here/a:b"],
    ["file:///srv/git/app.git", "file:///srv/git/app.git"],
    ["https://github.com/acme/app.git", "https://github.com/acme/app.git"],
    ["ssh://git@host:22/app.git", "ssh://git@host:22/app.git"],
    ["git://host/app.git", "git://host/app.git"],
    ["git@github.com:acme/app.git", "git@github.com:acme/app.git"],
    ["host:app", "host:app"],
  ])("%s → %s", (given, sent) => {
    expect(repositoryOf(given, base)).toBe(sent);
  });
});

describe("submit flags → TaskSpec", () => {
  it("maps --repo, --ref, --branch, --push, and the checks in order", () => {
    expect(
      spec(
        "--repo",
        "~/src/app",
        "--ref",
        "main",
        "--branch",
        "fix-42",
        "--push",
        "--check",
        "npm test",
        "--check",
        "npm run lint",
        "--check-timeout",
        "600",
        "Fix issue 42",
      ),
    ).toEqual({
      prompt: "Fix issue 42",
      workspace: {
        git: { repository: "/home/ada/src/app", ref: "main", branch: "fix-42", push: true },
      },
      checks: [
        { command: "npm test", timeoutSeconds: 600 },
        { command: "npm run lint", timeoutSeconds: 600 },
      ],
    });
  });

  it("maps each --depends-on to depends_on, after a file's", () => {
    expect(spec("--depends-on", "t1", "--depends-on", "t2", "go")["dependsOn"]).toEqual([
      "t1",
      "t2",
    ]);
    const f = file("deps.yaml", "prompt: go\ndepends_on: [t0]\n");
    expect(spec("-f", f, "--depends-on", "t1")["dependsOn"]).toEqual(["t0", "t1"]);
  });

  it("maps --type and each --param K=V to type and params, over a file's", () => {
    const f = file(
      "params.yaml",
      "prompt: go\ntype: code_review\nparams: { focus: a, paths: x }\n",
    );
    expect(
      spec("-f", f, "--param", "focus=error handling", "--param", "paths=a.ts,b=c.ts"),
    ).toMatchObject({
      type: "code_review",
      params: { focus: "error handling", paths: "a.ts,b=c.ts" },
    });
    expect(() => spec("--param", "focus", "go")).toThrow(/--param "focus": expected KEY=VALUE/);
  });

  it("maps --budget to budget.max_usd, and refuses what is not an amount", () => {
    expect(spec("--budget", "$0.50", "go")["budget"]).toEqual({ maxUsd: 0.5 });
    expect(() => spec("--budget", "lots", "go")).toThrow(/--budget "lots": expected US dollars/);
  });

  it("maps --path and --read-only to a host folder made absolute", () => {
    expect(spec("--path", "src", "--read-only", "review")).toEqual({
      prompt: "review",
      workspace: { hostPath: { path: "/work/here/src", readOnly: true } },
    });
    expect(spec("--path", "/srv/x", "p").workspace).toEqual({ hostPath: { path: "/srv/x" } });
  });

  it("sends no workspace and no checks without those flags, as before", () => {
    expect(spec("--priority", "3", "--label", "a=b", "hi")).toEqual({
      prompt: "hi",
      priority: 3,
      labels: { a: "b" },
    });
  });

  it.each([
    [["--repo", "a", "--path", "b"], /--repo and --path name two workspaces; give one/],
    [["--ref", "main"], /--ref goes with --repo REPO/],
    [["--branch", "b", "--push"], /--branch, --push go with --repo REPO/],
    [["--path", "d", "--push"], /--push goes with --repo.*--path folder is worked in as it is/],
    [["--read-only"], /--read-only goes with --path DIR/],
    [["--repo", "r", "--read-only"], /--read-only goes with --path DIR.*leave.*--push|--push/],
    [["--check-timeout", "60"], /--check-timeout is the time limit of each --check/],
    [["--check", "true", "--check-timeout", "0"], /--check-timeout must be a whole number/],
    [["--check", "true", "--check-timeout", "1.5"], /--check-timeout must be a whole number/],
    [["--check", " "], /--check needs a command/],
    [["--repo", ""], /--repo needs a REPO/],
  ])("refuses %j", (argv, message) => {
    expect(() => spec(...argv, "the prompt")).toThrow(UsageError);
    expect(() => spec(...argv, "the prompt")).toThrow(message);
  });
});

describe("submit -f SPEC.yaml", () => {
  it("reads the spec file's fields, a check as a plain command, paths relative to the file", () => {
    const f = file(
      "task.yaml",
      [
        "prompt: |",
        "  Add input validation",
        "  to the signup form",
        "priority: 5",
        "max_attempts: 2",
        "labels: { team: web }",
        "workspace: { git: { repository: ../app, ref: main, push: true } }",
        'checks: ["npm test", { command: npm run e2e, timeout_seconds: 900 }]',
      ].join("\n"),
    );
    expect(spec("-f", f)).toEqual({
      prompt: "Add input validation\nto the signup form\n",
      priority: 5,
      maxAttempts: 2,
      labels: { team: "web" },
      workspace: {
        git: { repository: path.resolve(dir, "../app"), ref: "main", push: true },
      },
      checks: [{ command: "npm test" }, { command: "npm run e2e", timeoutSeconds: 900 }],
    });
  });

  it("lets flags and a prompt argument override the file, field by field", () => {
    const f = file(
      "override.yml",
      [
        "prompt: from the file",
        "priority: 5",
        "labels: { team: web, ticket: A-1 }",
        "workspace: { git: { repository: /srv/app, ref: main, branch: b1 } }",
        "checks: [npm test, npm run lint]",
      ].join("\n"),
    );
    expect(
      spec("-f", f, "-p", "9", "--label", "ticket=B-2", "--branch", "b2", "--check-timeout", "30"),
    ).toEqual({
      prompt: "from the file",
      priority: 9,
      labels: { team: "web", ticket: "B-2" },
      workspace: { git: { repository: "/srv/app", ref: "main", branch: "b2" } },
      checks: [
        { command: "npm test", timeoutSeconds: 30 },
        { command: "npm run lint", timeoutSeconds: 30 },
      ],
    });
    const replaced = spec("-f", f, "--path", "/srv/other", "--check", "make", "the argument");
    expect(replaced.prompt).toBe("the argument");
    expect(replaced.workspace).toEqual({ hostPath: { path: "/srv/other" } });
    expect(replaced.checks).toEqual([{ command: "make" }]);
    expect(spec("-f", f, "-").prompt).toBe("from stdin");
  });

  it("takes --read-only over a file's host folder, and JSON files", () => {
    const f = file(
      "review.json",
      JSON.stringify({ prompt: "review", workspace: { host_path: { path: "src" } } }),
    );
    expect(spec("-f", f, "--read-only").workspace).toEqual({
      hostPath: { path: path.join(dir, "src"), readOnly: true },
    });
  });

  it("names the file and the field that is wrong", () => {
    const bad = (name: string, text: string, message: RegExp) => {
      const f = file(name, text);
      expect(() => spec("-f", f)).toThrow(UsageError);
      expect(() => spec("-f", f)).toThrow(message);
    };
    bad("a.yaml", "prompt: x\ncolour: blue\n", /a\.yaml: .*key "colour" is unknown/);
    bad("b.yaml", "prompt: x\npriority: high\n", /b\.yaml: .*TaskSpec\.priority/);
    bad("c.yaml", "- a\n- b\n", /c\.yaml should hold a task spec/);
    bad("d.yaml", "prompt: [\n", /d\.yaml is not valid YAML/);
    bad(
      "e.yaml",
      "prompt: x\nworkspace: { git: { repository: a }, host_path: { path: b } }\n",
      /e\.yaml: .*oneof set multiple times/,
    );
    bad("f.yaml", "priority: 1\n", /f\.yaml gives no prompt/);
    expect(() => spec("-f", path.join(dir, "missing.yaml"))).toThrow(/cannot read the spec file/);
  });

  it("still reads any other -f FILE as the prompt", () => {
    const f = file("prompt.txt", "prompt: not a spec");
    expect(spec("-f", f)).toEqual({ prompt: "prompt: not a spec" });
  });
});
