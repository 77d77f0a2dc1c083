import { Code } from "@connectrpc/connect";
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { WorkspaceError } from "./index.ts";
import { git, request, startDaemon, TestRepos, write } from "./test-repos.ts";

describe("Workspaces pushing the result branch", () => {
  it("pushes to a bare repository: again is a no-op, a later attempt fast-forwards, never forced", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" }, { bare: true });
    const ws = t.workspaces();
    const parent = t.dir("wt");
    const req = request(src, "p1", { push: true });

    const p1 = await ws.prepare(req, path.join(parent, "1"));
    write(p1.worktree, { "one.txt": "1\n" });
    const c1 = await ws.finish(p1, { sessionId: "s", outcome: "succeeded" });
    expect(c1).toMatchObject({ committed: true, pushed: true });
    const branches = () =>
      git(src, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/conductor/");
    expect(branches()).toBe(`refs/heads/conductor/p1 ${c1.headCommit}`);

    // Attempt 2 changes nothing: the same commit is pushed again, and nothing moves.
    const p2 = await ws.prepare({ ...req, attempt: 2 }, path.join(parent, "2"));
    const c2 = await ws.finish(p2, { sessionId: "s", outcome: "failed" });
    expect(c2).toMatchObject({ committed: false, pushed: true, headCommit: c1.headCommit });
    expect(branches()).toBe(`refs/heads/conductor/p1 ${c1.headCommit}`);

    // Attempt 3's commit goes on top: a fast-forward.
    const p3 = await ws.prepare({ ...req, attempt: 3 }, path.join(parent, "3"));
    write(p3.worktree, { "three.txt": "3\n" });
    const c3 = await ws.finish(p3, { sessionId: "s", outcome: "succeeded" });
    expect(git(src, "rev-parse", `${c3.headCommit}^`)).toBe(c1.headCommit);
    expect(branches()).toBe(`refs/heads/conductor/p1 ${c3.headCommit}`);

    // Someone else moves the source's branch: the push is refused, nothing forced, no work lost.
    const other = t.path("other");
    git(t.root, "clone", "-q", "-b", "conductor/p1", src, other);
    git(other, "reset", "-q", "--hard", "HEAD~2");
    write(other, { "theirs.txt": "theirs\n" });
    git(other, "add", "-A");
    git(other, "commit", "-qm", "theirs");
    git(other, "push", "-q", "-f", "origin", "conductor/p1");
    const theirs = git(other, "rev-parse", "HEAD");
    const p4 = await ws.prepare({ ...req, attempt: 4 }, path.join(parent, "4"));
    write(p4.worktree, { "four.txt": "4\n" });
    const refused = await ws
      .finish(p4, { sessionId: "s", outcome: "succeeded" })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(WorkspaceError);
    expect(refused).toMatchObject({ code: Code.FailedPrecondition, permanent: true });
    expect((refused as Error).message).toMatch(
      /branch "conductor\/p1" of repository .* not pushed \(never forced\)/,
    );
    expect(git(src, "rev-parse", "conductor/p1")).toBe(theirs);
    expect(existsSync(path.join(p4.worktree, "four.txt"))).toBe(true); // kept for recover()
    const again = await ws.recover();
    expect(again).toEqual([{ taskId: "p1", error: expect.stringMatching(/not pushed/) as string }]);
    expect(existsSync(p4.worktree)).toBe(true);

    // Once the source's branch is out of the way, recover() pushes the kept work.
    git(src, "update-ref", "-d", "refs/heads/conductor/p1");
    const [done] = await ws.recover();
    expect(done?.change).toMatchObject({ committed: true, pushed: true });
    expect(git(src, "show", "--format=", "--name-only", "conductor/p1")).toBe("four.txt");
    expect(git(src, "rev-parse", "conductor/p1^")).toBe(c3.headCommit);
    expect(existsSync(p4.worktree)).toBe(false);
  });

  it("fetches from and pushes to a git daemon on loopback", async () => {
    await using t = new TestRepos();
    const served = t.dir("served");
    const bare = t.source({ "a.txt": "a\n" }, { bare: true });
    git(t.root, "clone", "-q", "--bare", bare, path.join(served, "repo.git"));
    await using daemon = await startDaemon(served);
    const url = `${daemon.url}/repo.git`;
    const ws = t.workspaces();
    const { commit } = await ws.check({ repository: url, ref: "main", branch: "result" });
    expect(commit).toBe(git(bare, "rev-parse", "main"));

    const p = await ws.prepare(
      request(url, "d1", { ref: "main", branch: "result", push: true }),
      path.join(t.dir("wt"), "d1"),
    );
    write(p.worktree, { "b.txt": "b\n" });
    const c = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    expect(c).toMatchObject({ committed: true, pushed: true, branch: "result" });
    expect(git(path.join(served, "repo.git"), "rev-parse", "refs/heads/result")).toBe(c.headCommit);
    expect(readdirSync(path.dirname(p.worktree))).toEqual([]);
  });
});
