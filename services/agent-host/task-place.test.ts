import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { toBinary } from "@bufbuild/protobuf";
import { WorkspaceChangeSchema } from "../../gen/conductor/v1/task_pb.js";
import {
  allowedHostPath,
  changeProto,
  localRepository,
  MAX_RESULT_FILE_BYTES,
  repoName,
} from "./task-place.ts";

describe("host folders of tasks", () => {
  const root = mkdtempSync(path.join(tmpdir(), "task-place-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const allowed = path.join(root, "allowed");
  const data = path.join(allowed, "app", ".conductor", "data");
  mkdirSync(data, { recursive: true });
  mkdirSync(path.join(allowed, "other"), { recursive: true });
  mkdirSync(path.join(root, "outside"), { recursive: true });
  symlinkSync(path.join(root, "outside"), path.join(allowed, "link-out"));

  it("takes a folder under an allowed one, by its real path", () => {
    expect(allowedHostPath(path.join(allowed, "other"), [allowed], [data])).toBe(
      path.join(allowed, "other"),
    );
  });

  it.each([
    ["nothing allowed", path.join(allowed, "other"), [], /allows no host folders/],
    ["outside", path.join(root, "outside"), [allowed], /is not under agent\.allowed_host_paths/],
    ["a link leading out", path.join(allowed, "link-out"), [allowed], /is not under/],
    ["a prefix look-alike", `${allowed}-x`, [allowed], /does not exist|is not under/],
    [
      "one holding Conductor's data",
      path.join(allowed, "app"),
      [allowed],
      /Conductor's own folder/,
    ],
    ["Conductor's data itself", data, [allowed], /Conductor's own folder/],
    ["relative", "allowed/other", [allowed], /is not absolute/],
  ])("refuses %s", (_, p, allow, message) => {
    expect(() => allowedHostPath(p, allow, [data])).toThrow(message);
  });
});

describe("repoName", () => {
  it.each([
    ["/home/me/src/app", "app"],
    ["/srv/git/app.git/", "app"],
    ["git@github.com:acme/web-ui.git", "web-ui"],
    ["https://example.com/a/b%20c", "b-20c"],
    ["/", "repository"],
  ])("%s → %s", (repo, name) => expect(repoName(repo)).toBe(name));
});

describe("repositories in Conductor's own folders", () => {
  const root = mkdtempSync(path.join(tmpdir(), "task-place-repo-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const data = path.join(root, "data");
  const cache = path.join(data, "repos", "c.git");
  const git = (...args: string[]) => execFileSync("git", args, { stdio: "ignore" });
  git("init", "-q", "--bare", cache);
  const user = path.join(root, "user");
  git("init", "-q", user);

  it("takes the user's repository", async () => {
    await expect(localRepository(user, [data])).resolves.toBeUndefined();
  });

  it.each([
    ["the clone itself", () => cache],
    ["the clone as a file:// URL", () => `file://${cache}`],
    [
      "a folder whose .git file names the clone",
      () => {
        const d = path.join(root, "gitfile");
        mkdirSync(d);
        writeFileSync(path.join(d, ".git"), `gitdir: ${cache}\n`);
        return d;
      },
    ],
    [
      "a folder whose .git links to the clone",
      () => {
        const d = path.join(root, "linked");
        mkdirSync(d);
        symlinkSync(cache, path.join(d, ".git"));
        return d;
      },
    ],
    [
      "a repository borrowing the clone's objects",
      () => {
        const d = path.join(root, "borrower.git");
        git("init", "-q", "--bare", d);
        writeFileSync(path.join(d, "objects", "info", "alternates"), `${cache}/objects\n`);
        return d;
      },
    ],
  ])("refuses %s", async (_, make) => {
    await expect(localRepository(make(), [data])).rejects.toThrow(/Conductor's own folder/);
  });
});

describe("changeProto", () => {
  const change = (n: number, pathBytes: number) => ({
    baseCommit: "a".repeat(40),
    headCommit: "b".repeat(40),
    branch: "conductor/t",
    committed: true,
    pushed: false,
    files: Array.from({ length: n }, (_, i) => ({
      path: `${String(i).padStart(6, "0")}/${"d".repeat(pathBytes - 7)}`,
      oldPath: "",
      status: "added" as const,
      additions: 1,
      deletions: 0,
      binary: false,
    })),
  });

  it("lists at most 1,000 files and 256 KiB of their paths, counting all, so a result fits 4 MiB", () => {
    // 1,000 paths of 4,000 bytes (near PATH_MAX): 4 MB of paths, past a client's 4 MiB message.
    const long = changeProto("/src/app", change(1000, 4000), false);
    expect(long.filesTotal).toBe(1000);
    expect(long.files).toHaveLength(Math.floor(MAX_RESULT_FILE_BYTES / 4000));
    expect(toBinary(WorkspaceChangeSchema, long).length).toBeLessThan(300 * 1024);
    const short = changeProto("/src/app", change(1500, 20), false);
    expect([short.files.length, short.filesTotal]).toEqual([1000, 1500]);
    // One path past the bound is listed all the same: the first file always is.
    expect(changeProto("/src/app", change(1, 300 * 1024), false).files).toHaveLength(1);
  });
});
