import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import {
  FileStatus,
  TaskSchema,
  TaskState,
  type Task,
  type WorkspaceChangeSchema,
} from "../../gen/conductor/v1/task_pb.js";
import { apply, ApplyError } from "./apply.ts";
import { diff, NoChangeError } from "./diff.ts";

/** Runs git in `cwd` and returns its output, trimmed. */
const git = (cwd: string, ...args: string[]) =>
  execFileSync("git", args, { cwd, encoding: "utf8" }).trim();

let root: string;
/** The repository the task worked on: main at the base, the task's branch two commits on. */
let origin: string;
let base: string;
let head: string;
let patch: Buffer;
/** How many times the patch was asked for. */
let patchCalls = 0;

const tasks = new Map<string, Task>();
const client = createClient(
  OrchestratorService,
  createRouterTransport((router) =>
    router.service(OrchestratorService, {
      getTask: ({ id }) => ({ task: tasks.get(id) }),
      async *getTaskPatch() {
        patchCalls++;
        // In small pieces, as a big patch comes: the pieces joined are the whole.
        for (let at = 0; at < patch.length; at += 100)
          yield { chunk: patch.subarray(at, at + 100) };
      },
    }),
  ),
);

type ChangeInit = MessageInitShape<typeof WorkspaceChangeSchema>;

function task(id: string, state: TaskState, change?: ChangeInit, git = true): Task {
  return create(TaskSchema, {
    id,
    state,
    spec: {
      prompt: "p",
      workspace: git ? { kind: { case: "git", value: { repository: origin } } } : undefined,
    },
    result: change ? { change } : undefined,
  });
}

beforeAll(() => {
  root = mkdtempSync(path.join(tmpdir(), "conductor-patch-"));
  origin = path.join(root, "origin");
  mkdirSync(origin);
  git(origin, "init", "-q", "-b", "main");
  git(origin, "config", "user.name", "Test");
  git(origin, "config", "user.email", "test@example.com");
  writeFileSync(path.join(origin, "a.txt"), "one\ntwo\nthree\n");
  git(origin, "add", ".");
  git(origin, "commit", "-qm", "base");
  base = git(origin, "rev-parse", "HEAD");
  git(origin, "checkout", "-qb", "conductor/t-1");
  writeFileSync(path.join(origin, "a.txt"), "one\nTWO\nthree\n");
  git(origin, "commit", "-qam", "Change two");
  writeFileSync(path.join(origin, "b.txt"), "new\n");
  git(origin, "add", ".");
  git(origin, "commit", "-qm", "Add b");
  head = git(origin, "rev-parse", "HEAD");
  git(origin, "checkout", "-q", "main");
  patch = execFileSync("git", ["format-patch", "--stdout", `${base}..${head}`], { cwd: origin });
  const change: ChangeInit = {
    repository: origin,
    baseCommit: base,
    headCommit: head,
    branch: "conductor/t-1",
    files: [
      { path: "a.txt", status: FileStatus.MODIFIED, additions: 1n, deletions: 1n },
      { path: "b.txt", status: FileStatus.ADDED, additions: 1n },
    ],
    filesTotal: 2,
    committed: true,
  };
  tasks.set("t-1", task("t-1", TaskState.SUCCEEDED, change));
  tasks.set("t-same", task("t-same", TaskState.SUCCEEDED, { ...change, headCommit: base }));
  tasks.set("t-scratch", task("t-scratch", TaskState.SUCCEEDED, undefined, false));
  tasks.set("t-running", task("t-running", TaskState.RUNNING));
  tasks.set("t-failed", task("t-failed", TaskState.FAILED));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** What a command printed: lines, and the pieces it wrote. */
function io() {
  const lines: string[] = [];
  const pieces: Uint8Array[] = [];
  return {
    lines,
    pieces,
    out: (l: string) => void lines.push(l),
    write: async (d: string | Uint8Array) => void pieces.push(Buffer.from(d)),
  };
}

describe("conductor diff", () => {
  it("streams the patch piece by piece", async () => {
    const o = io();
    expect(await diff(client, "t-1", { stat: false, json: false }, o)).toBe(0);
    expect(o.pieces.length).toBeGreaterThan(1);
    expect(Buffer.concat(o.pieces).equals(patch)).toBe(true);
  });

  it("prints --stat and --json from the task's change", async () => {
    const stat = io();
    await diff(client, "t-1", { stat: true, json: false }, stat);
    expect(stat.lines).toEqual([
      " a.txt | 2 +-",
      " b.txt | 1 +",
      " 2 files changed, 2 insertions(+), 1 deletion(-)",
      ` conductor/t-1 · ${base.slice(0, 7)}..${head.slice(0, 7)}`,
    ]);
    const json = io();
    await diff(client, "t-1", { stat: true, json: true }, json);
    const change = JSON.parse(json.lines.join("\n")) as Record<string, unknown>;
    expect(change).toMatchObject({ baseCommit: base, headCommit: head, pushed: false });
    expect(change["files"]).toHaveLength(2);
  });

  it("says why a task has no change", async () => {
    const no = (id: string) => diff(client, id, { stat: false, json: false }, io());
    await expect(no("t-scratch")).rejects.toThrow(NoChangeError);
    await expect(no("t-scratch")).rejects.toThrow(/task t-scratch has no git workspace/);
    await expect(no("t-running")).rejects.toThrow(/has not finished an attempt yet \(RUNNING\)/);
    await expect(no("t-failed")).rejects.toThrow(/ended FAILED without a change/);
  });
});

describe("conductor apply", () => {
  let work: string;
  beforeEach(() => {
    work = mkdtempSync(path.join(root, "work-"));
    git(root, "clone", "-q", origin, work);
    git(work, "config", "user.name", "Me");
    git(work, "config", "user.email", "me@example.com");
    patchCalls = 0;
  });
  const run = (id: string, threeWay = false, json = false, cwd = work) => {
    const o = io();
    return apply(client, id, { threeWay, json }, { out: o.out, cwd }).then((code) => ({
      code,
      lines: o.lines,
    }));
  };

  it("applies the task's commits onto the current branch and says what it did", async () => {
    const before = git(work, "rev-parse", "HEAD");
    const r = await run("t-1");
    const after = git(work, "rev-parse", "HEAD");
    expect(r.code).toBe(0);
    expect(r.lines).toEqual([
      `applied 2 commits of task t-1 onto main (${before.slice(0, 7)}..${after.slice(0, 7)}): ` +
        "2 files changed, +2 −1",
    ]);
    expect(git(work, "log", "--format=%s", "-2")).toBe("Add b\nChange two");
    expect(git(work, "status", "--porcelain")).toBe("");
  });

  it("says so when the repository's folder (-C DIR) does not exist", async () => {
    await expect(run("t-1", false, false, path.join(root, "no-such-folder"))).rejects.toThrow(
      /there is no folder .*no-such-folder/,
    );
  });

  it("prints what it applied as JSON with --json", async () => {
    const r = await run("t-1", false, true);
    expect(JSON.parse(r.lines[0]!)).toMatchObject({
      task: "t-1",
      branch: "main",
      from: base,
      to: git(work, "rev-parse", "HEAD"),
      commits: 2,
      files: 2,
      insertions: 2,
      deletions: 1,
    });
  });

  it("aborts a git am that does not apply: the repository is as it was", async () => {
    writeFileSync(path.join(work, "a.txt"), "one\nzwei\nthree\n");
    git(work, "commit", "-qam", "Mine");
    const before = git(work, "rev-parse", "HEAD");
    const failed = run("t-1");
    await expect(failed).rejects.toThrow(ApplyError);
    await expect(failed).rejects.toThrow(
      /could not apply the commits of task t-1 onto main .*ran "git am --abort": the repository is as it was/,
    );
    await expect(failed).rejects.toThrow(/--3way/);
    const message = await failed.catch((e: Error) => e.message);
    expect(message).not.toMatch(/git am --continue/);
    expect(git(work, "rev-parse", "HEAD")).toBe(before);
    expect(git(work, "status", "--porcelain")).toBe("");
    expect(existsSync(path.join(work, ".git", "rebase-apply"))).toBe(false);
    // --3way cannot merge a conflicting line either, and is undone the same way.
    await expect(run("t-1", true)).rejects.toThrow(/the repository is as it was/);
    expect(git(work, "rev-parse", "HEAD")).toBe(before);
    expect(git(work, "status", "--porcelain")).toBe("");
  });

  it("refuses a repository that is not ready, before fetching the patch", async () => {
    writeFileSync(path.join(work, "a.txt"), "dirty\n");
    await expect(run("t-1")).rejects.toThrow(
      /uncommitted changes to tracked files \(a\.txt\): commit them, or .*git stash/,
    );
    git(work, "checkout", "--", "a.txt");
    writeFileSync(path.join(work, "untracked.txt"), "fine\n");
    mkdirSync(path.join(work, ".git", "rebase-apply"));
    writeFileSync(path.join(work, ".git", "rebase-apply", "applying"), "");
    await expect(run("t-1")).rejects.toThrow(/a "git am" is in progress in this repository/);
    rmSync(path.join(work, ".git", "rebase-apply", "applying"));
    await expect(run("t-1")).rejects.toThrow(/a "git rebase" is in progress/);
    const plain = mkdtempSync(path.join(tmpdir(), "conductor-not-a-repo-"));
    try {
      await expect(run("t-1", false, false, plain)).rejects.toThrow(
        /is not in a git repository: run "conductor apply t-1" in the repository/,
      );
    } finally {
      rmSync(plain, { recursive: true, force: true });
    }
    expect(patchCalls).toBe(0);
  });

  it("works from a folder inside the repository", async () => {
    mkdirSync(path.join(work, "sub"));
    const r = await run("t-1", false, false, path.join(work, "sub"));
    expect(r.code).toBe(0);
    expect(existsSync(path.join(work, "b.txt"))).toBe(true);
  });

  it("says when there is nothing to apply, and when a task has no change", async () => {
    const r = await run("t-same");
    expect(r).toEqual({
      code: 0,
      lines: [
        `task t-same changed nothing (its branch is its base, ${base.slice(0, 7)}): nothing to apply`,
      ],
    });
    await expect(run("t-scratch")).rejects.toThrow(/has no git workspace/);
    expect(patchCalls).toBe(0);
  });
});
