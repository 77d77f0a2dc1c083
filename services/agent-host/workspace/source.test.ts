import { describe, expect, it } from "vitest";
import { checkRef, checkTaskId, hidePassword, parseSource } from "./source.ts";

describe("parseSource", () => {
  it("normalises paths and URLs and keys the cache by them", () => {
    expect(parseSource("/srv/repos/x/")).toMatchObject({ url: "/srv/repos/x", local: true });
    expect(parseSource("/srv/repos/../repos/x").url).toBe("/srv/repos/x");
    expect(parseSource("HTTPS://host/x.git/")).toMatchObject({
      url: "https://host/x.git",
      local: false,
    });
    expect(parseSource("ssh://git@host:22/x.git").url).toBe("ssh://git@host:22/x.git");
    expect(parseSource("git@github.com:org/x.git")).toMatchObject({
      url: "git@github.com:org/x.git",
      local: false,
    });
    expect(parseSource("file:///srv/x").key).toMatch(/^[0-9a-f]{16}$/);
    expect(parseSource("/srv/x/").key).toBe(parseSource("/srv/x").key);
    expect(parseSource("/srv/x").key).not.toBe(parseSource("file:///srv/x").key);
  });

  it("hides a password in what it shows", () => {
    expect(parseSource("https://me:s3cret@host/x.git").display).toBe("https://me:***@host/x.git");
    expect(hidePassword("https://token@host/x")).toBe("https://token@host/x");
    expect(hidePassword("/a:b@c")).toBe("/a:b@c");
  });

  it("refuses options, control characters, other schemes and transport helpers", () => {
    for (const bad of [
      "-u/x",
      " /x",
      "/x\n",
      "/x\0",
      "http://h/x",
      "ftp://h/x",
      "ext::sh -c id",
      "fd::3",
      "x",
      "./x",
      "file://",
      "-oProxyCommand=x:y",
    ])
      expect(() => parseSource(bad), bad).toThrow(/repository|task names no repository/);
  });
});

describe("checkRef and checkTaskId", () => {
  it("lets through names git could hold and refuses the rest", () => {
    for (const ok of ["", "main", "feature/x-1", "v1.2", "refs/heads/main", "0123abc"])
      expect(() => checkRef(ok)).not.toThrow();
    for (const bad of [
      "-x",
      "a..b",
      "a b",
      "a~1",
      "a^",
      "x@{1}",
      "a:b",
      "x.lock",
      "/x",
      "x/",
      "a\\b",
      "a*",
    ])
      expect(() => checkRef(bad), bad).toThrow(/is not a valid branch, tag or commit name/);
    for (const ok of ["0b6f1c3e-8d4a-4b7e-9a51-2f1c5d8e7a90", "task_1", "a.b"])
      expect(() => checkTaskId(ok)).not.toThrow();
    for (const bad of ["", "../x", "a/b", ".x", "-x", "x.lock", "x.", "a..b", "x".repeat(129)])
      expect(() => checkTaskId(bad), bad).toThrow(/cannot name a workspace/);
  });
});
