import {
  existsSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ChangeTooBig } from "./errors.ts";
import { GitFailure, workNotSavable } from "./git-failure.ts";
import { git, request, TestRepos, write } from "./test-repos.ts";
import { MAX_LEFT_OUT } from "./worktree.ts";

describe("what a task's commit takes", () => {
  it("leaves out each file over the file bound, then the largest while the change is over its bound, naming them first", async () => {
    await using t = new TestRepos();
    const src = t.source({ "README.md": "r\n", "model.bin": "0123456789" });
    const ws = t.workspaces({ commitBounds: { maxFileBytes: 1000, maxChangeBytes: 2500 } });
    const p = await ws.prepare(request(src, "bounded"), path.join(t.dir("wt"), "w"), undefined);
    const huge = ":(top)huge*"; // pathspec magic and a glob in a name: taken as a name
    write(p.worktree, {
      [huge]: "h".repeat(1500), // over the file bound
      "model.bin": "m".repeat(990), // tracked, changed: the largest of the rest
      "a.txt": "a".repeat(900),
      "b.txt": "b".repeat(800),
      "odd\nname": "o".repeat(50),
      ".gitignore": "*.log\n",
      "build.log": "l".repeat(5000), // ignored: neither committed nor counted
    });
    rmSync(path.join(p.worktree, "README.md"));
    const change = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    // 990 + 900 + 800 + 50 + 6 = 2746 bytes over 2500: model.bin (990) left out, 1756 kept.
    expect(change.notCommitted).toEqual({ paths: [huge, "model.bin"], total: 2 });
    expect(Object.fromEntries(change.files.map((f) => [f.path, f.status]))).toEqual({
      ".gitignore": "added",
      "README.md": "deleted",
      "a.txt": "added",
      "b.txt": "added",
      "odd\nname": "added",
    });
    expect(existsSync(p.worktree)).toBe(false);
  });

  it("sizes nothing behind a link the agent put in place of a tracked folder, in the worktree or out of it", async () => {
    await using t = new TestRepos();
    const src = t.source({ "README.md": "r\n", "data/a.bin": "a".repeat(600), "ext/b.txt": "b" });
    const ws = t.workspaces({ commitBounds: { maxFileBytes: 1000, maxChangeBytes: 1600 } });
    const p = await ws.prepare(request(src, "linked"), path.join(t.dir("wt"), "w"), undefined);
    renameSync(path.join(p.worktree, "data"), path.join(p.worktree, "data2"));
    symlinkSync("data2", path.join(p.worktree, "data")); // mv data data2 && ln -s data2 data
    const outside = t.dir("outside");
    write(outside, { "b.txt": "o".repeat(5000) }); // over both bounds, and not the agent's
    rmSync(path.join(p.worktree, "ext"), { recursive: true });
    symlinkSync(outside, path.join(p.worktree, "ext"));
    write(p.worktree, { "big.txt": "n".repeat(900) });
    const change = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    // The change: data2/a.bin (600) + big.txt (900) = 1500 bytes, within 1600; data/a.bin (moved)
    // and ext/b.txt are gone (each behind a link now), not sized through it.
    expect(change.notCommitted).toBeUndefined();
    expect(Object.fromEntries(change.files.map((f) => [f.path, f.status]))).toEqual({
      "big.txt": "added",
      data: "added",
      "data2/a.bin": "renamed",
      ext: "added",
      "ext/b.txt": "deleted",
    });
  });

  it("commits the files of repositories nested 8 deep; one deeper is left out whole and named, never a gitlink", async () => {
    await using t = new TestRepos();
    const src = t.source({ "README.md": "r\n" });
    const ws = t.workspaces();
    const p = await ws.prepare(request(src, "deep"), path.join(t.dir("wt"), "w"), undefined);
    const levels = Array.from({ length: 9 }, (_, i) =>
      "abcdefghi"
        .slice(0, i + 1)
        .split("")
        .join("/"),
    );
    for (const dir of levels) {
      write(p.worktree, { [`${dir}/f.txt`]: `${dir}\n` });
      fakeRepository(path.join(p.worktree, dir));
    }
    // The deepest with a commit: git would take it as a gitlink to that commit.
    const deepest = path.join(p.worktree, levels[8]!);
    rmSync(path.join(deepest, ".git"), { recursive: true });
    git(deepest, "init", "-q");
    git(deepest, "add", "f.txt");
    git(deepest, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x");
    const change = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    expect(change.notCommitted).toEqual({ paths: [`${levels[8]}/`], total: 1 });
    const tree = git(p.cache, "ls-tree", "-r", change.headCommit);
    expect(tree).not.toMatch(/^160000/m);
    const files = tree.split("\n").map((l) => l.split("\t")[1]);
    expect(files.sort()).toEqual(
      ["README.md", ...levels.slice(0, 8).map((d) => `${d}/f.txt`)].sort(),
    );
  });

  it("commits the files of a repository made in place of a tracked file, not a gitlink, and names what git will not take", async () => {
    await using t = new TestRepos();
    const src = t.source({ "README.md": "r\n", s: "a\n" });
    const ws = t.workspaces();
    const p = await ws.prepare(request(src, "in-place"), path.join(t.dir("wt"), "w"), undefined);
    rmSync(path.join(p.worktree, "s"));
    write(p.worktree, { "s/g.txt": "in\n", ".GIT/foo": "hi\n", "sub/.Git/x": "y\n" });
    const repo = path.join(p.worktree, "s");
    git(repo, "init", "-q");
    git(repo, "add", "g.txt");
    git(repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x");
    const change = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    const tree = git(p.cache, "ls-tree", "-r", change.headCommit);
    expect(tree).not.toMatch(/^160000/m);
    expect(tree.split("\n").map((l) => l.split("\t")[1])).toEqual(["README.md", "s/g.txt"]);
    // git refuses a path inside any case of ".git": it stays out, named.
    expect(change.notCommitted?.paths.sort()).toEqual([".GIT/foo", "sub/.Git/x"]);
  });

  it("counts links towards the change's bound, and more than 1000 nested repositories as too many", async () => {
    await using t = new TestRepos();
    const src = t.source({ "README.md": "r\n" });
    const ws = t.workspaces({ commitBounds: { maxFileBytes: 1000, maxChangeBytes: 5000 } });
    const linked = await ws.prepare(request(src, "links"), path.join(t.dir("wt"), "l"), undefined);
    // 50 links naming 4,000 bytes each: 200,000 bytes a push carries, no file among them.
    for (let i = 0; i < 50; i++) symlinkSync("t".repeat(4000), path.join(linked.worktree, `l${i}`));
    await expect(ws.finish(linked, { sessionId: "s", outcome: "succeeded" })).rejects.toThrow(
      /the rest of the 50 looked at take 200000 bytes, over agent\.max_change_bytes \(5000\)/,
    );
    const many = await ws.prepare(request(src, "many"), path.join(t.dir("wt"), "m"), undefined);
    for (let i = 0; i <= 1000; i++) fakeRepository(path.join(many.worktree, `r${i}`));
    await expect(ws.finish(many, { sessionId: "s", outcome: "succeeded" })).rejects.toThrow(
      /more than 1000 git repositories are nested in it/,
    );
  });

  it(`commits nothing of a change that would need more than ${MAX_LEFT_OUT} files left out, and sets its worktree aside whole for the next attempt and a restart`, async () => {
    await using t = new TestRepos();
    const src = t.source({ "README.md": "r\n" });
    const dataDir = t.dir("data");
    const bounds = { maxFileBytes: 1 << 20, maxChangeBytes: 1000 };
    const ws = t.workspaces({ dataDir, commitBounds: bounds });
    const p = await ws.prepare(request(src, "too-big"), path.join(t.dir("wt"), "w"), undefined);
    // 1,200 files of 10 bytes: with 1,000 left out, 2,000 bytes are still over 1,000.
    const files: Record<string, string> = {};
    for (let i = 0; i < 1200; i++) files[`f/${i}.txt`] = "0123456789";
    write(p.worktree, files);
    const e = await ws.finish(p, { sessionId: "s", outcome: "succeeded" }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ChangeTooBig);
    expect(workNotSavable(e)).toBe(true);
    expect((e as Error).message).toMatch(
      /more than a commit may take, so nothing of it was committed: with the 1000 largest .* the 1200 looked at take 2000 bytes, over agent\.max_change_bytes \(1000/,
    );
    expect(existsSync(path.join(p.worktree, "f", "1199.txt"))).toBe(true);
    expect((await ws.changeOn(p))?.committed ?? false).toBe(false);

    // The task's next attempt goes on: the worktree is set aside, kept whole, out of the way.
    const unsaved = path.join(dataDir, "unsaved");
    const p2 = await ws.prepare(
      request(src, "too-big", { attempt: 2 }),
      path.join(t.dir("wt"), "w2"),
      undefined,
    );
    expect(existsSync(p.worktree)).toBe(false);
    const kept = readdirSync(unsaved);
    expect(kept).toEqual([expect.stringMatching(/^too-big-\d+$/)]);
    expect(readdirSync(path.join(unsaved, kept[0]!, "f"))).toHaveLength(1200);
    // Cut from git: its .git named an admin dir the next attempt's worktree has now.
    expect(existsSync(path.join(unsaved, kept[0]!, ".git"))).toBe(false);
    // And so does a restart: recover() sets aside what can never be saved, and says nothing failed.
    write(p2.worktree, files);
    await expect(ws.finish(p2, { sessionId: "s", outcome: "succeeded" })).rejects.toThrow(
      ChangeTooBig,
    );
    const restarted = t.workspaces({ dataDir, commitBounds: bounds });
    expect(await restarted.recover()).toEqual([{ taskId: "too-big" }]);
    expect(existsSync(p2.worktree)).toBe(false);
    expect(readdirSync(unsaved)).toHaveLength(2);
  });

  it("measures a file as git stores it: one re-encoded past the bounds fails the change", async () => {
    await using t = new TestRepos();
    const src = t.source({ "README.md": "r\n" });
    const ws = t.workspaces({ commitBounds: { maxFileBytes: 1000, maxChangeBytes: 2000 } });
    const p = await ws.prepare(request(src, "encoded"), path.join(t.dir("wt"), "w"), undefined);
    // 990 bytes in the worktree, 2,970 as git stores them (each byte a 3-byte UTF-8 character).
    write(p.worktree, {
      ".gitattributes": "*.txt working-tree-encoding=CP437\n",
      "a.txt": Buffer.alloc(990, 0xc4),
      "b.txt": Buffer.alloc(990, 0xc4),
    });
    await expect(ws.finish(p, { sessionId: "s", outcome: "succeeded" })).rejects.toThrow(
      /as git stores it \(re-encoded, .*\), one file takes 2970 bytes, over agent\.max_commit_file_bytes \(1000\)/,
    );
  });

  it(`says which bound it is when more than ${MAX_LEFT_OUT} files are over the file bound`, async () => {
    await using t = new TestRepos();
    const src = t.source({ "README.md": "r\n" });
    const ws = t.workspaces({ commitBounds: { maxFileBytes: 10, maxChangeBytes: 1 << 30 } });
    const p = await ws.prepare(request(src, "many-big"), path.join(t.dir("wt"), "w"), undefined);
    const files: Record<string, string> = {};
    for (let i = 0; i <= MAX_LEFT_OUT; i++) files[`f/${i}.txt`] = "x".repeat(11);
    write(p.worktree, files);
    await expect(ws.finish(p, { sessionId: "s", outcome: "succeeded" })).rejects.toThrow(
      /more than 1000 of its files \(of the 1001 looked at\) are over agent\.max_commit_file_bytes \(10\)/,
    );
  });

  it("takes git timing out on reading the worktree as work it can never save, not a push timing out", () => {
    const timedOut = (...args: string[]) => new GitFailure(args, null, "", true);
    expect(workNotSavable(timedOut("add", "--all"))).toBe(true);
    expect(workNotSavable(timedOut("-c", "x=y", "status", "--porcelain=v2"))).toBe(true);
    expect(workNotSavable(new Error("finishing", { cause: timedOut("status", "-z") }))).toBe(true);
    expect(workNotSavable(timedOut("push", "origin"))).toBe(false);
    expect(
      workNotSavable(
        new GitFailure(["add"], 128, "fatal: Unable to create 'x.lock': File exists", false),
      ),
    ).toBe(false);
  });
});

/** Makes `dir` a repository as git finds one (a `.git` with HEAD, objects and refs): fast. */
function fakeRepository(dir: string): void {
  mkdirSync(path.join(dir, ".git", "objects"), { recursive: true });
  mkdirSync(path.join(dir, ".git", "refs"));
  writeFileSync(path.join(dir, ".git", "HEAD"), "ref: refs/heads/main\n");
}
