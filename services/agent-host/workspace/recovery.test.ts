import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { RECOVERED } from "./index.ts";
import type { WorkspaceRecord } from "./record.ts";
import { git, request, startDaemon, TestRepos, write } from "./test-repos.ts";

describe("Workspaces after a crash", () => {
  it("recovers a worktree a killed AgentHost left: the work is on the branch, the worktree gone", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const dataDir = t.path("data");
    const parent = t.dir("wt");
    const killed = t.workspaces({ dataDir });
    const p = await killed.prepare(request(src, "crash"), path.join(parent, "crash"));
    write(p.worktree, { "partial.txt": "half done\n" });
    const idle = await killed.prepare(request(src, "idle"), path.join(parent, "idle"));
    // (killed is dropped here without finish, as by kill -9)

    const ws = t.workspaces({ dataDir });
    const recovered = await ws.recover();
    expect(recovered.map((r) => r.taskId)).toEqual(["crash", "idle"]);
    const [crash, never] = recovered;
    expect(crash?.error).toBeUndefined();
    expect(crash?.change).toMatchObject({ committed: true, branch: "conductor/crash" });
    expect(crash?.change?.files.map((f) => f.path)).toEqual(["partial.txt"]);
    expect(git(p.cache, "log", "-1", "--format=%s", "conductor/crash")).toBe(
      `conductor: task crash, attempt 1 (${RECOVERED})`,
    );
    expect(never?.change?.committed).toBe(false);
    expect(existsSync(p.worktree)).toBe(false);
    expect(existsSync(idle.worktree)).toBe(false);
    expect(readdirSync(path.join(dataDir, "workspaces"))).toEqual([]);
    expect(readdirSync(path.join(p.cache, "worktrees")).length).toBe(0);
    expect(await ws.recover()).toEqual([]);

    // The next attempt goes on from the recovered work.
    const p2 = await ws.prepare(
      request(src, "crash", { attempt: 2 }),
      path.join(parent, "crash-2"),
    );
    expect(readFileSync(path.join(p2.worktree, "partial.txt"), "utf8")).toBe("half done\n");
    await ws.finish(p2, { sessionId: "s", outcome: "succeeded" });
  });

  it("recovers a worktree killed while a nested repository's .git was moved aside, and removes that .git", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const dataDir = t.path("data");
    const taskDir = path.join(t.dir("tasks"), "nested");
    mkdirSync(taskDir);
    const killed = t.workspaces({ dataDir });
    const p = await killed.prepare(request(src, "nested"), path.join(taskDir, "w"));
    write(p.worktree, { "sub/f.txt": "f\n" });
    // Killed while snapshot() had the nested repository's .git beside the worktree.
    write(taskDir, { ".nested-git-0/HEAD": "ref: refs/heads/main\n" });
    const recovered = await t.workspaces({ dataDir }).recover();
    expect(recovered[0]?.change?.files.map((f) => f.path)).toEqual(["sub/f.txt"]);
    expect(readdirSync(taskDir)).toEqual([]);
  });

  it("prepare() first commits and removes what an attempt cut short left", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const parent = t.dir("wt");
    const p1 = await ws.prepare(request(src, "cut"), path.join(parent, "1"));
    write(p1.worktree, { "kept.txt": "kept\n" });
    const p2 = await ws.prepare(request(src, "cut", { attempt: 2 }), path.join(parent, "2"));
    expect(existsSync(p1.worktree)).toBe(false);
    expect(p2.startCommit).not.toBe(p2.baseCommit);
    expect(readFileSync(path.join(p2.worktree, "kept.txt"), "utf8")).toBe("kept\n");
    await expect(ws.finish(p1, { sessionId: "", outcome: "late" })).rejects.toThrow(/no workspace/);
    const c = await ws.finish(p2, { sessionId: "s", outcome: "succeeded" });
    expect(c.committed).toBe(false);
    expect(c.headCommit).toBe(p2.startCommit);
  });

  it("records the admin dir before the agent runs, and never commits a worktree it was still making or removing", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const dataDir = t.path("data");
    const parent = t.dir("wt");
    const ws = t.workspaces({ dataDir });
    const recordOf = (id: string) => path.join(dataDir, "workspaces", `${id}.json`);
    const read = (id: string) => JSON.parse(readFileSync(recordOf(id), "utf8")) as WorkspaceRecord;

    const making = await ws.prepare(request(src, "making"), path.join(parent, "making"));
    const removing = await ws.prepare(request(src, "removing"), path.join(parent, "removing"));
    expect(read("making")).toMatchObject({ phase: "ready", adminDir: making.adminDir });
    expect(readFileSync(path.join(making.worktree, ".git"), "utf8")).toBe(
      `gitdir: ${making.adminDir}\n`,
    );

    // As if killed half-way through the checkout, and half-way through the removal.
    writeFileSync(recordOf("making"), JSON.stringify({ ...read("making"), phase: "preparing" }));
    writeFileSync(
      recordOf("removing"),
      JSON.stringify({
        ...read("removing"),
        phase: "removing",
        result: { head: removing.startCommit, committed: false, pushed: false },
      }),
    );
    write(making.worktree, { "half.txt": "half\n" });
    write(removing.worktree, { "half.txt": "half\n" });

    const out = await t.workspaces({ dataDir }).recover();
    expect(out).toEqual([
      { taskId: "making" },
      {
        taskId: "removing",
        change: expect.objectContaining({ committed: false, files: [] }) as unknown,
      },
    ]);
    expect(git(making.cache, "for-each-ref", "refs/heads/")).toBe("");
    expect(readdirSync(parent)).toEqual([]);
    expect(readdirSync(path.join(making.cache, "worktrees"))).toEqual([]);
  });

  it("goes on from the cache when the source cannot be reached at a later attempt", async () => {
    await using t = new TestRepos();
    const served = t.dir("served");
    git(t.root, "clone", "-q", "--bare", t.source({ "a.txt": "a\n" }), path.join(served, "r.git"));
    const ws = t.workspaces();
    const parent = t.dir("wt");
    let url: string;
    {
      await using daemon = await startDaemon(served);
      url = `${daemon.url}/r.git`;
      const p1 = await ws.prepare(request(url, "away"), path.join(parent, "1"));
      write(p1.worktree, { "one.txt": "1\n" });
      await ws.finish(p1, { sessionId: "s", outcome: "failed" });
    }
    const p2 = await ws.prepare(request(url, "away", { attempt: 2 }), path.join(parent, "2"));
    expect(readFileSync(path.join(p2.worktree, "one.txt"), "utf8")).toBe("1\n");
    const c2 = await ws.finish(p2, { sessionId: "s", outcome: "succeeded" });
    expect(c2.files.map((f) => f.path)).toEqual(["one.txt"]);
    // A new task cannot start without the source: its base must come from there.
    await expect(ws.prepare(request(url, "new"), path.join(parent, "3"))).rejects.toMatchObject({
      message: expect.stringMatching(/cannot be reached/) as string,
    });
  });

  it("honours an aborted signal before touching anything", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const wt = path.join(t.dir("wt"), "w");
    const ac = new AbortController();
    ac.abort(new Error("stop"));
    await expect(ws.prepare(request(src, "x"), wt, undefined, ac.signal)).rejects.toThrow("stop");
    await expect(ws.check({ repository: src, ref: "", branch: "" }, ac.signal)).rejects.toThrow(
      "stop",
    );
    expect(existsSync(wt)).toBe(false);
    expect(await ws.recover()).toEqual([]);
  });
});
