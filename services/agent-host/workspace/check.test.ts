import { Code } from "@connectrpc/connect";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { WorkspaceError } from "./index.ts";
import { fingerprint, freePort, git, request, TestRepos } from "./test-repos.ts";

/** The WorkspaceError a promise rejects with. */
async function refusal(p: Promise<unknown>): Promise<WorkspaceError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(WorkspaceError);
  const err = e as WorkspaceError;
  expect(err.message).not.toMatch(/usage:|\n\s+at |^fatal/);
  return err;
}

describe("Workspaces.check and bad input", () => {
  it("resolves branches, then tags, then commit ids; '' is the source's HEAD", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const first = git(src, "rev-parse", "HEAD");
    git(src, "tag", "-a", "-m", "v1", "v1");
    git(src, "commit", "-q", "--allow-empty", "-m", "second");
    git(src, "branch", "dev", first);
    git(src, "tag", "dev", "HEAD"); // a tag named like a branch: the branch wins
    const second = git(src, "rev-parse", "HEAD");
    const before = fingerprint(src);
    const ws = t.workspaces();
    const commit = async (ref: string) =>
      (await ws.check({ repository: src, ref, branch: "" })).commit;
    expect(await commit("")).toBe(second);
    expect(await commit("HEAD")).toBe(second);
    expect(await commit("main")).toBe(second);
    expect(await commit("refs/heads/main")).toBe(second);
    expect(await commit("dev")).toBe(first);
    expect(await commit("v1")).toBe(first);
    expect(await commit("refs/tags/dev")).toBe(second);
    expect(await commit(first)).toBe(first);
    expect(await commit(first.slice(0, 10))).toBe(first);
    // A new commit in the source is seen by the next check.
    git(src, "commit", "-q", "--allow-empty", "-m", "third");
    expect(await commit("main")).toBe(git(src, "rev-parse", "HEAD"));
    git(src, "reset", "-q", "--hard", second);
    expect(fingerprint(src).split("\n--\n")[0]).toBe(before.split("\n--\n")[0]);
  });

  it("refuses what cannot be a workspace, with a message naming the value, the source untouched", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const before = fingerprint(src);
    const plain = t.dir("plain");
    const ws = t.workspaces();
    const closed = await freePort();
    const marker = path.join(t.root, "pwned");
    const cases: Array<
      [Partial<{ repository: string; ref: string; branch: string }>, Code, RegExp, boolean?]
    > = [
      [
        { repository: path.join(t.root, "missing") },
        Code.FailedPrecondition,
        /repository ".*missing" does not exist on this node/,
        true,
      ],
      [
        { repository: plain },
        Code.FailedPrecondition,
        /repository ".*plain-\d+" is not a git repository/,
        true,
      ],
      [
        { ref: "nope" },
        Code.FailedPrecondition,
        /ref "nope" is not a branch, tag or commit of repository ".*" \(its branches include main\)/,
        true,
      ],
      [
        { ref: "0123abcd" },
        Code.FailedPrecondition,
        /ref "0123abcd" is not a branch, tag or commit/,
        true,
      ],
      [{ ref: "-x" }, Code.InvalidArgument, /ref "-x" is not a valid/, true],
      [{ ref: "a..b" }, Code.InvalidArgument, /ref "a..b" is not a valid/, true],
      [
        { branch: "bad..name" },
        Code.InvalidArgument,
        /branch "bad..name" is not a valid git branch name/,
        true,
      ],
      [{ branch: "-f" }, Code.InvalidArgument, /branch "-f" is not a valid/, true],
      [{ branch: "has space" }, Code.InvalidArgument, /branch "has space" is not a valid/, true],
      [{ branch: "x.lock" }, Code.InvalidArgument, /branch "x.lock" is not a valid/, true],
      [
        { repository: `git://127.0.0.1:${closed}/x.git` },
        Code.FailedPrecondition,
        /repository "git:\/\/127.0.0.1:\d+\/x.git" cannot be reached .*: check the URL/,
        false,
      ],
      [{ repository: "--upload-pack=touch /tmp/x" }, Code.InvalidArgument, /starts with "-"/, true],
      [{ repository: `${src}\n` }, Code.InvalidArgument, /NUL or a line break/, true],
      [{ repository: `${src}\0x` }, Code.InvalidArgument, /NUL or a line break/, true],
      [
        { repository: "http://example.com/x.git" },
        Code.InvalidArgument,
        /scheme http: only file/,
        true,
      ],
      [
        { repository: `ext::sh -c touch% ${marker}` },
        Code.InvalidArgument,
        /transport helper/,
        true,
      ],
      [
        { repository: "relative/path" },
        Code.InvalidArgument,
        /neither an absolute path nor a URL/,
        true,
      ],
      [{ repository: "" }, Code.InvalidArgument, /names no repository/, true],
    ];
    for (const [input, code, message, permanent] of cases) {
      const req = { repository: src, ref: "", branch: "", ...input };
      const e = await refusal(ws.check(req));
      expect({ input, code: e.code, permanent: e.permanent }).toEqual({ input, code, permanent });
      expect(e.message).toMatch(message);
      // prepare() refuses the same, leaving nothing behind.
      const wt = path.join(t.dir("wt"), "w");
      const e2 = await refusal(ws.prepare(request(req.repository, "bad", req), wt));
      expect({ input, code: e2.code }).toEqual({ input, code });
      expect(existsSync(wt)).toBe(false);
    }
    expect(existsSync(marker)).toBe(false);
    expect(await ws.recover()).toEqual([]);
    expect(fingerprint(src)).toBe(before);
  });

  it("refuses a task id that cannot name a file or ref, and a worktree path that exists", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const parent = t.dir("wt");
    for (const id of ["../x", "a/b", "-x", "", "x.lock"]) {
      const e = await refusal(ws.prepare(request(src, id), path.join(parent, "w")));
      expect(e.code).toBe(Code.InvalidArgument);
    }
    const e = await refusal(ws.prepare(request(src, "t"), parent));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.message).toMatch(/the worktree path ".*" already exists/);
    expect(readdirSync(parent)).toEqual([]);
  });

  it("refuses a result branch another task of the node holds work on", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const parent = t.dir("wt");
    const p = await ws.prepare(request(src, "one", { branch: "shared" }), path.join(parent, "1"));
    writeFileSync(path.join(p.worktree, "x"), "x");
    await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    const e = await refusal(
      ws.prepare(request(src, "two", { branch: "shared" }), path.join(parent, "2")),
    );
    expect(e).toMatchObject({ code: Code.FailedPrecondition, permanent: true });
    expect(e.message).toMatch(/result branch "shared" already holds work of another task/);
  });
});
