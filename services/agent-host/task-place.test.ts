import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { allowedHostPath, repoName } from "./task-place.ts";

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
