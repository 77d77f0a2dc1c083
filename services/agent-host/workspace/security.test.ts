import { Code } from "@connectrpc/connect";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { WorkspaceError } from "./index.ts";
import { notCommittedIn } from "./worktree.ts";
import { git, request, TestRepos, treeOf, write } from "./test-repos.ts";

/** A shell script that appends its name to `marker` when anything runs it. */
function trap(dir: string, name: string, marker: string): string {
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, name);
  writeFileSync(file, `#!/bin/sh\necho ${name} >> '${marker}'\ncat >/dev/null\n`);
  chmodSync(file, 0o755);
  return file;
}

/** A repository at `work` whose config and hooks run `trap` scripts for everything they can. */
function evilRepo(work: string, marker: string): string {
  mkdirSync(work, { recursive: true });
  git(work, "init", "-q");
  const gitDir = path.join(work, ".git");
  const hooks = path.join(gitDir, "hooks");
  for (const h of [
    "pre-commit",
    "post-commit",
    "commit-msg",
    "post-checkout",
    "pre-push",
    "post-index-change",
    "reference-transaction",
    "pre-auto-gc",
  ])
    trap(hooks, h, marker);
  const fsmonitor = trap(gitDir, "fsmonitor", marker);
  const filter = trap(gitDir, "filter", marker);
  const cfg = [
    `[core]\n\tfsmonitor = ${fsmonitor}\n\thooksPath = ${hooks}\n\tpager = ${filter}\n\tsshCommand = ${filter}`,
    `[filter "evil"]\n\tclean = ${filter}\n\tsmudge = ${filter}\n\tprocess = ${filter}\n\trequired = true`,
    `[diff "evil"]\n\ttextconv = ${filter}\n\tcommand = ${filter}`,
  ];
  writeFileSync(
    path.join(gitDir, "config"),
    readFileSync(path.join(gitDir, "config"), "utf8") + cfg.join("\n") + "\n",
  );
  return gitDir;
}

describe("Workspaces facing a hostile agent", () => {
  it("runs nothing the agent planted in .git, nested repositories or attributes; links stay links", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const p = await ws.prepare(request(src, "evil"), path.join(t.dir("wt"), "evil"));
    const marker = path.join(t.root, "MARKER");
    const wt = p.worktree;

    // .git now points at a git dir of the agent's, with fsmonitor, hooks and filters that run a script.
    const theirs = evilRepo(t.dir("agent-owned"), marker);
    writeFileSync(path.join(wt, ".git"), `gitdir: ${theirs}\n`);
    // A nested repository with a commit (a gitlink) and an empty one, both with the same tricks.
    for (const sub of ["nested", "empty"]) evilRepo(path.join(wt, sub), marker);
    write(wt, { "nested/file.txt": "n\n" });
    git(
      path.join(wt, "nested"),
      "-c",
      "core.hooksPath=/dev/null",
      "-c",
      "core.fsmonitor=false",
      "add",
      "file.txt",
    );
    git(
      path.join(wt, "nested"),
      "-c",
      "core.hooksPath=/dev/null",
      "-c",
      "core.fsmonitor=false",
      "commit",
      "-q",
      "--no-verify",
      "-m",
      "n",
    );
    // Attributes naming the drivers, and a link to a host file.
    write(wt, { ".gitattributes": "* filter=evil diff=evil\n", "data.txt": "agent data\n" });
    symlinkSync("/etc/passwd", path.join(wt, "passwd"));
    // The traps are armed: git finding the repository through .git, as a person would, runs them.
    rmSync(marker, { force: true });
    expect(() => git(wt, "status", "--porcelain")).not.toThrow();
    expect(readFileSync(marker, "utf8")).toMatch(/fsmonitor/);
    rmSync(marker);

    const change = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    expect(existsSync(marker)).toBe(false);
    const files = Object.fromEntries(
      treeOf(p.cache, change.headCommit).map((l) => {
        const [meta = "", name = ""] = l.split("\t");
        return [name, meta.split(" ")[0]];
      }),
    );
    expect(files).toEqual({
      ".gitattributes": "100644",
      "a.txt": "100644",
      "data.txt": "100644",
      // a nested repository: its files, not a gitlink (its .git kept out)
      "nested/file.txt": "100644",
      passwd: "120000", // a link, not /etc/passwd's content
    });
    expect(git(p.cache, "cat-file", "-p", `${change.headCommit}:passwd`)).toBe("/etc/passwd");
    expect(git(p.cache, "cat-file", "-p", `${change.headCommit}:data.txt`)).toBe("agent data");
    // patch() does not run the agent's diff drivers either.
    for await (const _ of ws.patch(src, change.baseCommit, change.headCommit)) {
      // read it all
    }
    expect(existsSync(marker)).toBe(false);
    expect(existsSync(wt)).toBe(false);
    expect(existsSync(path.join(theirs, "config"))).toBe(true); // the agent's folder elsewhere is left alone
  });

  it("commits nothing from a worktree replaced by a link, and removes the link, not what it points at", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const secrets = t.dir("host-secrets");
    write(secrets, { "key.pem": "secret\n" });
    const p = await ws.prepare(request(src, "swap"), path.join(t.dir("wt"), "swap"));
    renameSync(p.worktree, path.join(t.root, "moved-away"));
    symlinkSync(secrets, p.worktree);

    const e = await ws.finish(p, { sessionId: "s", outcome: "succeeded" }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(WorkspaceError);
    expect(e).toMatchObject({ code: Code.FailedPrecondition });
    expect((e as Error).message).toMatch(
      /worktree ".*swap" of task swap was replaced .*nothing of it was committed/,
    );
    expect(git(p.cache, "for-each-ref", "refs/heads/")).toBe("");
    expect(existsSync(p.worktree)).toBe(false);
    expect(readFileSync(path.join(secrets, "key.pem"), "utf8")).toBe("secret\n");
    expect(existsSync(p.adminDir)).toBe(false);
    expect(await ws.recover()).toEqual([]);
  });

  it("removes a worktree without following the links the agent made in it", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const outside = t.dir("outside");
    write(outside, { "keep.txt": "keep\n" });
    const p = await ws.prepare(request(src, "links"), path.join(t.dir("wt"), "links"));
    symlinkSync(outside, path.join(p.worktree, "escape"));
    const c = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    expect(c.files).toEqual([
      { path: "escape", oldPath: "", status: "added", additions: 1, deletions: 0, binary: false },
    ]);
    expect(existsSync(p.worktree)).toBe(false);
    expect(readFileSync(path.join(outside, "keep.txt"), "utf8")).toBe("keep\n");
  });
});

describe("notCommittedIn", () => {
  it("reads the paths git add --ignore-errors named as skipped, each once, the first 100", () => {
    const deep = "d".repeat(3000);
    const stderr = [
      `warning: could not open directory '${deep}/': File name too long`,
      // As git cuts it at PATH_MAX: no closing quote, no reason; and named twice.
      `warning: could not open directory '${deep}/e/${"f".repeat(900)}`,
      `warning: could not open directory '${deep}/e/${"f".repeat(900)}`,
      'error: open("closed/x"): Permission denied',
      "error: unable to index file 'closed/x'",
      "error: 'empty/' does not have a commit checked out",
      "fatal: adding files failed",
      "warning: in the working copy of 'a', LF will be replaced by CRLF",
      ...Array.from({ length: 200 }, (_, i) => `error: unable to index file 'f${i}'`),
    ].join("\n");
    const found = notCommittedIn(stderr);
    expect(found).toHaveLength(100);
    expect(found.slice(0, 5)).toEqual([
      `${deep}/`,
      `${deep}/e/${"f".repeat(900)}`,
      "closed/x",
      "empty/",
      "f0",
    ]);
  });

  it("names in a change only what git did skip, not what a file named like git's message says", async () => {
    await using t = new TestRepos();
    const src = t.source({ "README.md": "r\n" });
    const ws = t.workspaces();
    const p = await ws.prepare(request(src, "forged"), path.join(t.dir("wt"), "w"), undefined);
    // Line endings converted: git names each file it adds, raw, newlines and all.
    const forge = (name: string) => `a\nerror: unable to index file '${name}'\nb`;
    write(p.worktree, {
      ".gitattributes": "* text eol=crlf\n",
      [forge("README.md")]: "x\n",
      [forge("no-such-file")]: "x\n",
      [`c\nwarning: could not open directory 'src`]: "x\n",
      "src/kept.txt": "x\n",
    });
    // And one git does skip: 25 folders of 200 bytes, past PATH_MAX.
    execFileSync("bash", [
      "-c",
      `cd "$1"; n=$(printf 'd%.0s' $(seq 200)); for i in $(seq 25); do mkdir $n; cd $n; done; echo x > f`,
      "deep",
      p.worktree,
    ]);
    const change = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
    expect(change?.notCommitted?.total).toBe(1);
    expect(change?.notCommitted?.paths[0]).toMatch(/^d{200}\/d{200}\//);
    expect(change?.files.map((f) => f.path)).toContain(forge("README.md"));
  });
});
