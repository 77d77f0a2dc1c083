import { describe, expect, it } from "vitest";
import { parseDiff } from "./change.ts";

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
