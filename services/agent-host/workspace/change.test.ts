import path from "node:path";
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../shared/log.ts";
import type { Cache } from "./cache.ts";
import { changedFiles, parseDiff } from "./change.ts";
import { Git } from "./git.ts";
import { git, TestRepos, write } from "./test-repos.ts";

const Z = "\0";
const id = (c: string) => c.repeat(40);

describe("parseDiff", () => {
  it("joins raw statuses and numstat counts, renames and binary files included", () => {
    const raw = [
      `:100644 100644 ${id("a")} ${id("b")} M`,
      "a.txt",
      `:000000 100644 ${id("0")} ${id("c")} A`,
      "odd\tname\n.txt",
      `:100644 100644 ${id("d")} ${id("d")} R100`,
      "old/x",
      "new/x",
      `:100644 000000 ${id("e")} ${id("0")} D`,
      ":starts-with-colon",
      `:100644 120000 ${id("f")} ${id("1")} T`,
      "link",
      `:000000 100644 ${id("0")} ${id("2")} A`,
      "img.bin",
    ];
    const numstat = [
      "3\t1\ta.txt",
      "2\t0\todd\tname\n.txt",
      "0\t0\t",
      "old/x",
      "new/x",
      "0\t5\t:starts-with-colon",
      "1\t1\tlink",
      "-\t-\timg.bin",
    ];
    expect(parseDiff([...raw, ...numstat].join(Z) + Z)).toEqual([
      { path: "a.txt", oldPath: "", status: "modified", additions: 3, deletions: 1, binary: false },
      {
        path: "odd\tname\n.txt",
        oldPath: "",
        status: "added",
        additions: 2,
        deletions: 0,
        binary: false,
      },
      {
        path: "new/x",
        oldPath: "old/x",
        status: "renamed",
        additions: 0,
        deletions: 0,
        binary: false,
      },
      {
        path: ":starts-with-colon",
        oldPath: "",
        status: "deleted",
        additions: 0,
        deletions: 5,
        binary: false,
      },
      {
        path: "link",
        oldPath: "",
        status: "type_changed",
        additions: 1,
        deletions: 1,
        binary: false,
      },
      { path: "img.bin", oldPath: "", status: "added", additions: 0, deletions: 0, binary: true },
    ]);
    expect(parseDiff("")).toEqual([]);
  });
});

describe("changedFiles", () => {
  it("lists a change too big to read whole in part, by status, and counts it all", async () => {
    await using t = new TestRepos();
    const work = t.source({ "base.txt": "base\n" });
    const base = git(work, "rev-parse", "HEAD").trim();
    const many = Array.from({ length: 300 }, (_, i): [string, string] => [
      `dir/${"p".repeat(100)}-${i}.txt`,
      "x\n",
    ]);
    write(work, Object.fromEntries(many));
    git(work, "add", "-A");
    git(work, "commit", "-q", "-m", "many");
    const head = git(work, "rev-parse", "HEAD").trim();
    const g = new Git(60_000, silentLogger);
    const gitDir = path.join(work, ".git");
    const cache = { call: (signal?: AbortSignal) => ({ gitDir, signal }) } as unknown as Cache;
    const whole = await changedFiles(g, cache, base, head);
    expect(whole.filesTotal).toBe(300);
    expect(whole.files[0]).toMatchObject({ status: "added", additions: 1, deletions: 0 });
    // Read up to 8 KiB only: about 40 files' raw records.
    const part = await changedFiles(g, cache, base, head, undefined, 8 * 1024);
    expect(part.filesTotal).toBe(300);
    expect(part.files.length).toBeGreaterThan(10);
    expect(part.files.length).toBeLessThan(300);
    expect(part.files).toEqual(
      whole.files.slice(0, part.files.length).map((f) => ({ ...f, additions: 0 })),
    );
  });
});
