import { execFileSync } from "node:child_process";
import { lstatSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ownTree } from "./agent-files.ts";

describe("ownTree", () => {
  let root = "";
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it.runIf(process.getuid?.() === 0)(
    "gives a folder of another user to the agent's, however deep, following no link",
    () => {
      root = mkdtempSync(path.join(tmpdir(), "conductor-own-"));
      const outside = path.join(root, "outside");
      mkdirSync(outside);
      writeFileSync(path.join(outside, "keep.txt"), "kept\n");
      const tree = path.join(root, "workspace");
      mkdirSync(tree);
      // 25 folders of 200-byte names: 5,025 bytes of path, past PATH_MAX (4,096); a link out.
      execFileSync("bash", [
        "-c",
        `set -e; cd "$1"; ln -s "$2" out; n=$(printf 'd%.0s' $(seq 200))
         for i in $(seq 25); do mkdir $n; cd $n; done; echo bottom > f.txt`,
        "plant",
        tree,
        outside,
      ]);
      const agent = { uid: 61_990, gid: 61_990 };
      ownTree(tree, agent);
      const owners = execFileSync("find", [tree, "-printf", "%U:%G\n"], { encoding: "utf8" });
      expect(new Set(owners.trim().split("\n"))).toEqual(new Set(["61990:61990"]));
      expect(owners.trim().split("\n")).toHaveLength(28); // the folder, the link, 25 folders, f.txt
      expect(lstatSync(path.join(tree, "out")).uid).toBe(61_990);
      expect(statSync(path.join(outside, "keep.txt")).uid).toBe(0);
      expect(statSync(outside).uid).toBe(0);
    },
  );
});
