import {
  createWriteStream,
  existsSync,
  lstatSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { fingerprint, git, request, TestRepos, treeOf, write } from "./test-repos.ts";

const lines = (n: number, tag: string) =>
  Array.from({ length: n }, (_, i) => `${tag} line ${i}\n`).join("");

describe("Workspaces", () => {
  it("commits the files of a repository the agent made inside (git init, git clone), not a gitlink", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const p = await ws.prepare(request(src, "nested"), path.join(t.dir("wt"), "w"), undefined);
    for (const dir of ["app", "app/vendor/lib"]) {
      write(p.worktree, { [`${dir}/file.txt`]: `${dir}\n` });
      git(path.join(p.worktree, dir), "init", "-q");
      git(path.join(p.worktree, dir), "add", "file.txt");
      git(
        path.join(p.worktree, dir),
        "-c",
        "user.name=a",
        "-c",
        "user.email=a@b",
        "commit",
        "-qm",
        "x",
      );
    }
    const change = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    const tree = git(p.cache, "ls-tree", "-r", change.headCommit);
    expect(tree).not.toMatch(/^160000/m);
    expect(
      tree
        .split("\n")
        .map((l) => l.split("\t")[1])
        .sort(),
    ).toEqual(["a.txt", "app/file.txt", "app/vendor/lib/file.txt"]);
  });

  it("starts from commits of the source only, never from another task's result the clone holds", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const base = git(src, "rev-parse", "HEAD");
    const ws = t.workspaces();
    const p = await ws.prepare(request(src, "secret"), path.join(t.dir("wt"), "w"), undefined);
    write(p.worktree, { "secret.txt": "another task's work\n" });
    const { headCommit } = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    expect(await ws.check({ repository: src, ref: base.slice(0, 7), branch: "" })).toEqual({
      commit: base,
    });
    for (const ref of [headCommit, headCommit.slice(0, 4), `conductor/secret`]) {
      await expect(ws.check({ repository: src, ref, branch: "" })).rejects.toThrow(
        /is not a branch, tag or commit of repository/,
      );
      await expect(
        ws.prepare({ ...request(src, "thief"), ref }, path.join(t.dir("wt2"), "w"), undefined),
      ).rejects.toThrow(/is not a branch, tag or commit/);
    }
  });

  it("save() commits the work so far; what changes after (a check's output) is not committed", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const wt = path.join(t.dir("wt"), "task-s");
    const p = await ws.prepare(request(src, "task-s"), wt, undefined);
    write(wt, { "a.txt": "the agent's\n" });
    await ws.save(p, { sessionId: "s", outcome: "before its checks" });
    write(wt, { "coverage.txt": "a check wrote this\n", "a.txt": "a check changed this\n" });
    const change = await ws.finish(p, { sessionId: "s", outcome: "failed" });
    expect(change.committed).toBe(true);
    expect(change.files.map((f) => f.path)).toEqual(["a.txt"]);
    expect(git(p.cache, "show", `${change.headCommit}:a.txt`)).toBe("the agent's");
    expect(git(p.cache, "log", "-1", "--format=%s", change.headCommit)).toMatch(
      /before its checks/,
    );
    expect(existsSync(wt)).toBe(false);
  });

  it("commits what the agent changed onto the result branch, and patch() reproduces it with git am", async () => {
    await using t = new TestRepos();
    const src = t.source({
      "a.txt": lines(5, "a"),
      "b.txt": lines(4, "b"),
      "old/name.txt": lines(20, "moved"),
      ".gitignore": "*.log\n",
    });
    const before = fingerprint(src);
    const ws = t.workspaces();
    const base = git(src, "rev-parse", "HEAD");
    expect(await ws.check({ repository: src, ref: "", branch: "" })).toEqual({ commit: base });

    const wt = path.join(t.dir("wt"), "task-1");
    const p = await ws.prepare(request(src, "task-1"), wt, undefined);
    expect(p).toMatchObject({
      baseCommit: base,
      startCommit: base,
      branch: "conductor/task-1",
      worktree: wt,
    });
    expect(readFileSync(path.join(wt, "a.txt"), "utf8")).toBe(lines(5, "a"));

    write(wt, {
      "a.txt": lines(3, "a") + "changed\n",
      "added.txt": "one\ntwo\nthree\n",
      "img.bin": Buffer.from([0, 1, 2, 3, 255, 0, 7]),
      "debug.log": "ignored\n",
    });
    rmSync(path.join(wt, "b.txt"));
    renameSync(path.join(wt, "old"), path.join(wt, "new"));

    const change = await ws.finish(p, { sessionId: "sess-1", outcome: "succeeded" });
    expect(change).toMatchObject({
      baseCommit: base,
      branch: "conductor/task-1",
      committed: true,
      pushed: false,
    });
    expect([...change.files].sort((x, y) => x.path.localeCompare(y.path))).toEqual([
      { path: "a.txt", oldPath: "", status: "modified", additions: 1, deletions: 2, binary: false },
      {
        path: "added.txt",
        oldPath: "",
        status: "added",
        additions: 3,
        deletions: 0,
        binary: false,
      },
      { path: "b.txt", oldPath: "", status: "deleted", additions: 0, deletions: 4, binary: false },
      { path: "img.bin", oldPath: "", status: "added", additions: 0, deletions: 0, binary: true },
      {
        path: "new/name.txt",
        oldPath: "old/name.txt",
        status: "renamed",
        additions: 0,
        deletions: 0,
        binary: false,
      },
    ]);

    // The branch, in the cache, is exactly one commit with those changes, by the configured author.
    const cache = p.cache;
    expect(git(cache, "rev-parse", "refs/heads/conductor/task-1")).toBe(change.headCommit);
    expect(git(cache, "rev-parse", `${change.headCommit}^`)).toBe(base);
    expect(git(cache, "log", "-1", "--format=%an <%ae>|%cn <%ce>", change.headCommit)).toBe(
      "Conductor <conductor@example.com>|Conductor <conductor@example.com>",
    );
    expect(git(cache, "log", "-1", "--format=%B", change.headCommit)).toBe(
      [
        "conductor: task task-1, attempt 1 (succeeded)",
        "",
        "Conductor-Task: task-1",
        "Conductor-Attempt: 1",
        "Conductor-Agent: agent-1",
        "Claude-Session: sess-1",
      ].join("\n"),
    );
    expect(treeOf(cache, change.headCommit).map((l) => l.split("\t")[1])).toEqual([
      ".gitignore",
      "a.txt",
      "added.txt",
      "img.bin",
      "new/name.txt",
    ]);
    // The worktree, its admin dir and its record are gone; the source is untouched.
    expect(existsSync(wt)).toBe(false);
    expect(existsSync(p.adminDir)).toBe(false);
    expect(readdirSync(path.join(path.dirname(cache), "..", "workspaces"))).toEqual([]);
    expect(fingerprint(src)).toBe(before);

    // patch() through `git am` in a clone at the base gives the same tree.
    const patchFile = path.join(t.root, "task-1.patch");
    await pipeline(
      Readable.from(ws.patch(src, base, change.headCommit)),
      createWriteStream(patchFile),
    );
    const clone = t.path("clone");
    git(t.root, "clone", "-q", src, clone);
    git(clone, "checkout", "-q", "--detach", base);
    git(clone, "am", "-q", patchFile);
    expect(git(clone, "rev-parse", "HEAD^{tree}")).toBe(
      git(cache, "rev-parse", `${change.headCommit}^{tree}`),
    );
    expect(fingerprint(src)).toBe(before);
  });

  it("commits nothing when nothing changed: the head is the base and no branch is made", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const wt = path.join(t.dir("wt"), "w");
    const p = await ws.prepare(request(src, "idle"), wt);
    const change = await ws.finish(p, { sessionId: "s", outcome: "failed" });
    expect(change).toEqual({
      baseCommit: p.baseCommit,
      headCommit: p.baseCommit,
      branch: "conductor/idle",
      files: [],
      filesTotal: 0,
      committed: false,
      pushed: false,
    });
    expect(git(p.cache, "for-each-ref", "refs/heads")).toBe("");
    expect(git(p.cache, "rev-list", "--all", "--count")).toBe("1");
    expect(existsSync(wt)).toBe(false);
  });

  it("starts attempt 2 from attempt 1's commit and keeps the first attempt's base", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const parent = t.dir("wt");
    const p1 = await ws.prepare(
      request(src, "t2", { branch: "feature/x" }),
      path.join(parent, "1"),
    );
    write(p1.worktree, { "first.txt": "from attempt 1\n" });
    const c1 = await ws.finish(p1, { sessionId: "s1", outcome: "failed" });

    write(src, { "a.txt": "moved on\n" }); // the source's main moves on meanwhile
    git(src, "commit", "-qam", "later");

    const p2 = await ws.prepare(
      request(src, "t2", { attempt: 2, branch: "feature/x" }),
      path.join(parent, "2"),
    );
    expect(p2.baseCommit).toBe(c1.baseCommit);
    expect(p2.startCommit).toBe(c1.headCommit);
    expect(readFileSync(path.join(p2.worktree, "first.txt"), "utf8")).toBe("from attempt 1\n");
    expect(readFileSync(path.join(p2.worktree, "a.txt"), "utf8")).toBe("a\n");
    write(p2.worktree, { "second.txt": "from attempt 2\n" });
    const c2 = await ws.finish(p2, { sessionId: "s2", outcome: "succeeded" });
    expect(c2.baseCommit).toBe(c1.baseCommit);
    expect(git(p2.cache, "rev-parse", `${c2.headCommit}^`)).toBe(c1.headCommit);
    expect(c2.files.map((f) => `${f.status} ${f.path}`)).toEqual([
      "added first.txt",
      "added second.txt",
    ]);
    expect(git(p2.cache, "log", "-1", "--format=%s", c2.headCommit)).toBe(
      "conductor: task t2, attempt 2 (succeeded)",
    );
  });

  it.runIf(process.getuid?.() === 0)(
    "gives the worktree's files to the agent's user, the parent stays ours",
    async () => {
      await using t = new TestRepos();
      const src = t.source({ "a.txt": "a\n", "d/b.txt": "b\n" });
      const ws = t.workspaces();
      const parent = t.dir("wt");
      const owner = { uid: 4242, gid: 4243 };
      const p = await ws.prepare(request(src, "owned"), path.join(parent, "w"), owner);
      for (const f of ["", "a.txt", "d", "d/b.txt", ".git"])
        expect(lstatSync(path.join(p.worktree, f))).toMatchObject({ uid: 4242, gid: 4243 });
      expect(statSync(parent).uid).toBe(0);
      write(p.worktree, { "d/b.txt": "changed\n" });
      const c = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
      expect(c.files).toEqual([
        {
          path: "d/b.txt",
          oldPath: "",
          status: "modified",
          additions: 1,
          deletions: 1,
          binary: false,
        },
      ]);
    },
  );

  it.runIf(process.getuid?.() === 0)(
    "works on a repository whose file names are not UTF-8 (a Latin-1 name), owned by the agent",
    async () => {
      await using t = new TestRepos();
      const src = t.source({ "a.txt": "a\n" });
      const latin1 = Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x2e, 0x74, 0x78, 0x74]); // "caf\xe9.txt"
      writeFileSync(Buffer.concat([Buffer.from(`${src}/`), latin1]), "x\n");
      git(src, "add", "-A");
      git(src, "commit", "-q", "-m", "latin-1");
      const ws = t.workspaces();
      const owner = { uid: 4242, gid: 4243 };
      const p = await ws.prepare(request(src, "latin"), path.join(t.dir("wt"), "w"), owner);
      const inside = Buffer.concat([Buffer.from(`${p.worktree}/`), latin1]);
      expect(lstatSync(inside)).toMatchObject({ uid: 4242 });
      writeFileSync(inside, "changed\n");
      const c = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
      expect(c.committed).toBe(true);
      expect(c.files).toHaveLength(1);
      expect(existsSync(p.worktree)).toBe(false);
    },
  );
});
