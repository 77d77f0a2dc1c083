import { Code } from "@connectrpc/connect";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  createReadStream,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeSync,
} from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { WorkspaceError, type Prepared, type Workspaces } from "./index.ts";
import { GIT_ENV, git, request, TestRepos } from "./test-repos.ts";

const MB = 1024 * 1024;

/** The pid of this process's `git format-patch` child, if one runs. */
function formatPatchPid(): number | undefined {
  for (const name of readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (
        ppid === process.pid &&
        readFileSync(`/proc/${name}/cmdline`, "utf8").includes("format-patch")
      )
        return Number(name);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

/** Bytes a process has written so far (/proc/<pid>/io). */
function written(pid: number): number {
  return Number(/^wchar: (\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, "utf8"))?.[1]);
}

/** A task that adds `files` text files of `mb` MB each, finished. */
async function bigChange(t: TestRepos, ws: Workspaces, src: string, files: number, mb: number) {
  const p: Prepared = await ws.prepare(request(src, "big"), path.join(t.dir("wt"), "big"));
  for (let f = 0; f < files; f++) {
    const fd = openSync(path.join(p.worktree, `big-${f}.txt`), "w");
    for (let i = 0; i < mb; i++) {
      const hex = randomBytes(MB / 2).toString("hex");
      writeSync(fd, hex.replace(/(.{63})./g, "$1\n"));
    }
    closeSync(fd);
  }
  return { p, change: await ws.finish(p, { sessionId: "s", outcome: "succeeded" }) };
}

describe("Workspaces.patch", () => {
  it("streams a 50 MB patch as git writes it, never far ahead of the reader", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const { p, change } = await bigChange(t, ws, src, 5, 10);

    const hash = createHash("sha256");
    let bytes = 0;
    let pid: number | undefined;
    let ahead = 0;
    for await (const chunk of ws.patch(src, change.baseCommit, change.headCommit)) {
      pid ??= formatPatchPid();
      expect(pid).toBeDefined(); // git still runs: the patch comes while it is written
      if (existsSync(`/proc/${pid}`)) ahead = Math.max(ahead, written(pid!) - bytes - chunk.length);
      hash.update(chunk);
      bytes += chunk.length;
    }
    expect(bytes).toBeGreaterThan(50 * MB);
    expect(ahead).toBeLessThan(2 * MB); // pulled: git waits for the reader (pipe + stream buffers)
    expect(pid && existsSync(`/proc/${pid}`)).toBe(false);

    // Byte for byte what git itself prints.
    const file = path.join(t.root, "git.patch");
    execFileSync(
      "sh",
      [
        "-c",
        `git format-patch --stdout --binary -M "$1..$2" > "$3"`,
        "sh",
        change.baseCommit,
        change.headCommit,
        file,
      ],
      {
        cwd: p.cache,
        env: { ...GIT_ENV, GIT_DIR: p.cache },
      },
    );
    const theirs = createHash("sha256");
    for await (const chunk of createReadStream(file)) theirs.update(chunk as Buffer);
    expect(hash.digest("hex")).toBe(theirs.digest("hex"));
  });

  it("stops git when the reader stops or the signal aborts, and ends with an error when git fails", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const { p, change } = await bigChange(t, ws, src, 2, 4);

    let pid: number | undefined;
    for await (const _ of ws.patch(src, change.baseCommit, change.headCommit)) {
      pid = formatPatchPid();
      break;
    }
    expect(pid).toBeDefined();
    expect(existsSync(`/proc/${pid}`)).toBe(false);

    const ac = new AbortController();
    const reading = (async () => {
      for await (const _ of ws.patch(src, change.baseCommit, change.headCommit, ac.signal)) {
        pid = formatPatchPid();
        ac.abort(new Error("client went away"));
      }
    })();
    await expect(reading).rejects.toThrow("client went away");
    expect(existsSync(`/proc/${pid}`)).toBe(false);

    // The second file's blob goes missing from the cache: git fails half-way.
    const blob = git(p.cache, "rev-parse", `${change.headCommit}:big-1.txt`);
    rmSync(path.join(p.cache, "objects", blob.slice(0, 2), blob.slice(2)));
    let got = 0;
    const failing = (async () => {
      for await (const chunk of ws.patch(src, change.baseCommit, change.headCommit))
        got += chunk.length;
    })();
    await expect(failing).rejects.toMatchObject({
      code: Code.Internal,
      message: expect.stringMatching(/git format-patch of repository .* failed/) as string,
    });
    expect(got).toBeGreaterThan(0);
  });

  it("refuses (FAILED_PRECONDITION) when the cache or the commits are not there", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const ws = t.workspaces();
    const head = git(src, "rev-parse", "HEAD");
    const drain = async (it: AsyncIterable<Buffer>) => {
      for await (const _ of it) {
        // nothing
      }
    };
    const none = await drain(ws.patch(src, head, head)).catch((e: unknown) => e);
    expect(none).toBeInstanceOf(WorkspaceError);
    expect(none).toMatchObject({ code: Code.FailedPrecondition });
    expect((none as Error).message).toMatch(/this node holds no clone of repository/);
    await ws.check({ repository: src, ref: "", branch: "" });
    const missing = "1".repeat(40);
    await expect(drain(ws.patch(src, head, missing))).rejects.toMatchObject({
      code: Code.FailedPrecondition,
      message: expect.stringMatching(/commit 1{40} is not in this node's clone/) as string,
    });
    await expect(drain(ws.patch(src, "HEAD", head))).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
  });
});
