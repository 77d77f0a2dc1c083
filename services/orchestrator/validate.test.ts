import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { TaskSpecSchema, type TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { SPEC_LIMITS, validateSpec } from "./validate.ts";

const limits = { maxPromptBytes: 100_000 };
const spec = (fields: MessageInitShape<typeof TaskSpecSchema>) =>
  create(TaskSpecSchema, { prompt: "do it", ...fields });
const git = (repository: string, more: { ref?: string; branch?: string } = {}) =>
  ({ kind: { case: "git", value: { repository, ...more } } }) as const;

/** The INVALID_ARGUMENT a spec is refused with (fails the test when it is accepted). */
function refusal(s: TaskSpec, l = limits): ConnectError {
  try {
    validateSpec(s, l);
  } catch (e) {
    expect(e).toBeInstanceOf(ConnectError);
    expect((e as ConnectError).code).toBe(Code.InvalidArgument);
    return e as ConnectError;
  }
  throw new Error("the spec was accepted");
}

const big = (n: number) => "x".repeat(n);

describe("validateSpec: workspaces and checks", () => {
  it("accepts paths, git's URLs and scp-like addresses, refs and branches git takes", () => {
    for (const repository of [
      "/src/app",
      "file:///src/app.git",
      "git://127.0.0.1:9418/app.git",
      "ssh://git@example.com/acme/app.git",
      "https://example.com/acme/app.git",
      "git@github.com:acme/app.git",
      "build-box:repos/app.git",
    ]) {
      expect(() => validateSpec(spec({ workspace: git(repository) }), limits)).not.toThrow();
    }
    const s = spec({
      workspace: git("/src/app", { ref: "release/2.1", branch: "fix/issue-42" }),
      checks: Array.from({ length: SPEC_LIMITS.checks }, () => ({
        command: "npm test",
        timeoutSeconds: SPEC_LIMITS.checkTimeoutSeconds,
      })),
    });
    expect(validateSpec(s, limits)).toBe(s);
  });

  it.each([
    [git(""), /repository is required/],
    [
      git("relative/dir"),
      /neither an absolute path nor a file:\/\/, git:\/\/, ssh:\/\/ or https:\/\/ URL/,
    ],
    [git("ext::sh -c touch% /tmp/x"), /neither an absolute path/],
    [git("ext::sh"), /neither an absolute path/],
    [git("-uhack"), /starts with "-"/],
    [git("/src/app", { ref: "--upload-pack=touch" }), /ref .* is not a branch, tag or commit id/],
    [git("/src/app", { ref: "HEAD~1" }), /such as HEAD~1 are not taken/],
    [git("/src/app", { branch: "a..b" }), /branch .* is not a name git accepts/],
    [git("/src/app", { branch: "has space" }), /not a name git accepts/],
    [git("/src/app", { branch: "x.lock" }), /not a name git accepts/],
    [
      { kind: { case: "hostPath", value: { path: "relative" } } } as const,
      /must be an absolute path/,
    ],
  ])("refuses workspace %j", (workspace, message) => {
    expect(refusal(spec({ workspace })).rawMessage).toMatch(message);
  });

  it("bounds the checks: count, command and timeout", () => {
    const many = Array.from({ length: SPEC_LIMITS.checks + 1 }, () => ({ command: "true" }));
    expect(refusal(spec({ checks: many })).rawMessage).toMatch(/over the limit of 16/);
    expect(refusal(spec({ checks: [{ command: " " }] })).rawMessage).toMatch(/command is empty/);
    expect(refusal(spec({ checks: [{ command: "a\0b" }] })).rawMessage).toMatch(/NUL/);
    expect(
      refusal(spec({ checks: [{ command: "true", timeoutSeconds: 86_401 }] })).rawMessage,
    ).toMatch(/timeout_seconds must be between 0 .* and 86400/);
  });
});

describe("validateSpec", () => {
  it("accepts a spec at every bound", () => {
    const labels: Record<string, string> = {};
    for (let i = 0; i < SPEC_LIMITS.labels; i++) {
      labels[`k${i}`.padEnd(SPEC_LIMITS.labelKeyBytes, "k")] = big(SPEC_LIMITS.labelValueBytes);
    }
    const s = spec({
      prompt: "- fix the failing test in foo.py",
      timeoutSeconds: SPEC_LIMITS.timeoutSeconds,
      maxAttempts: SPEC_LIMITS.maxAttempts,
      maxTurns: SPEC_LIMITS.maxTurns,
      idempotencyKey: big(SPEC_LIMITS.idempotencyKeyBytes),
      model: "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
      allowedTools: Array.from({ length: SPEC_LIMITS.allowedTools }, () =>
        "Bash(git diff:*)".padEnd(SPEC_LIMITS.toolBytes, "*"),
      ),
      labels,
    });
    expect(validateSpec(s, limits)).toBe(s);
  });

  it("refuses every size, count and duration over its bound, naming the field and the bound", () => {
    const cases: [Partial<Omit<TaskSpec, "$typeName">>, RegExp][] = [
      [
        { labels: { big: big(3_900_000) } },
        /spec\.labels\["big"\] is 3900000 bytes, over the limit of 1024/,
      ],
      [{ labels: { [big(129)]: "v" } }, /labels key .* over the limit of 128 bytes/],
      [
        { labels: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, "v"])) },
        /65 labels, over the limit of 64/,
      ],
      [{ model: big(200_000) }, /spec\.model is 200000 bytes, over the limit of 256/],
      [
        { allowedTools: [big(200_000)] },
        /allowed_tools\[0\] is 200000 bytes, over the limit of 256/,
      ],
      [
        { allowedTools: Array.from({ length: 129 }, () => "Read") },
        /129 entries, over the limit of 128/,
      ],
      [
        { timeoutSeconds: 3_000_000 },
        /timeout_seconds must be between 0 \(the default\) and 604800/,
      ],
      [{ maxAttempts: 101 }, /max_attempts must be between 0 .* and 100/],
      [{ maxTurns: 10_001 }, /max_turns must be between 0 \(no limit\) and 10000/],
      [{ idempotencyKey: big(257) }, /idempotency_key is 257 bytes, over the limit of 256/],
      [
        { prompt: big(100_001) },
        /100001 bytes, over the limit of 100000 \(orchestrator.max_prompt_bytes\)/,
      ],
    ];
    for (const [fields, message] of cases) {
      const e = refusal(spec(fields));
      expect(e.rawMessage).toMatch(message);
    }
  });

  it("keeps the prompt under the CLI's one-argument limit even when configured higher", () => {
    const e = refusal(spec({ prompt: big(128 * 1024) }), { maxPromptBytes: 10_000_000 });
    expect(e.rawMessage).toMatch(
      /131072 bytes, over the limit of 131071 \(the most one command-line argument/,
    );
    expect(
      validateSpec(spec({ prompt: big(131_071) }), { maxPromptBytes: 10_000_000 }),
    ).toBeTruthy();
  });

  it("refuses what no CLI could ever run: NUL bytes, a model that is not a name, control characters in tools", () => {
    expect(refusal(spec({ prompt: "fix\0it" })).rawMessage).toMatch(
      /spec\.prompt contains a NUL character \(at offset 3\)/,
    );
    expect(refusal(spec({ model: "--dangerously-skip-permissions" })).rawMessage).toMatch(
      /is not a model name/,
    );
    expect(refusal(spec({ model: "sonnet\0" })).rawMessage).toMatch(/NUL|not a model name/);
    expect(refusal(spec({ allowedTools: ["Read\nWrite"] })).rawMessage).toMatch(
      /control character/,
    );
    expect(refusal(spec({ allowedTools: [" "] })).rawMessage).toMatch(
      /allowed_tools\[0\] is empty/,
    );
    expect(refusal(spec({ labels: { k: "a\0b" } })).rawMessage).toMatch(/NUL/);
  });

  it("quotes at most a short prefix of the input it rejects", () => {
    const huge = `poetry${big(3_000_000)}`;
    // A type's name is the task type registry's to check (task-types.test.ts).
    for (const s of [
      spec({ permissionMode: huge }),
      spec({ model: `-${huge}` }),
      spec({ labels: { [huge]: "v" } }),
      spec({ labels: { k: huge } }),
      spec({ allowedTools: [huge] }),
    ]) {
      const e = refusal(s);
      expect(e.rawMessage.length).toBeLessThan(400);
      expect(e.rawMessage).toMatch(/"-?poetryx{57,}"… \(300000[67] bytes\)/);
    }
  });
});
