import { execFileSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ownTree } from "./agent-files.ts";

let root = "";
afterEach(() => rmSync(root, { recursive: true, force: true }));

describe("ownTree", () => {
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

describe("removeTree", () => {
  it("removes trees deeper than PATH_MAX, with folders closed to their owner, following no link", () => {
    root = mkdtempSync(path.join(tmpdir(), "conductor-rm-"));
    const outside = path.join(root, "outside");
    mkdirSync(outside);
    writeFileSync(path.join(outside, "keep.txt"), "kept\n");
    chmodSync(outside, 0o555);
    // The trees, in a folder of the same user (as a worktree is in the service's own).
    const home = path.join(root, "home");
    const trees = [path.join(home, "tree"), path.join(home, "second")];
    for (const t of trees) mkdirSync(t, { recursive: true });
    // Planted and removed by a user who is not root (nobody, when this runs as root): folders
    // closed to their owner stop rm -rf then.
    const as =
      process.getuid?.() === 0
        ? ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
        : [];
    if (as.length > 0) {
      chmodSync(root, 0o755);
      execFileSync("chown", ["-R", "nobody:nogroup", home]);
    }
    const run = (...cmd: string[]) => execFileSync(cmd[0]!, cmd.slice(1), { stdio: "pipe" });
    // 25 folders of 200-byte names: 5,025 bytes of path, past PATH_MAX (4,096).
    const plant = `set -e; cd "$1"; mkdir -p a/b; echo x > a/b/f; chmod 000 a/b a; ln -s "$2" out
      n=$(printf 'd%.0s' $(seq 200)); for i in $(seq 25); do mkdir $n; cd $n; done
      mkdir z; echo x > z/f; chmod 000 z`;
    for (const t of trees) run(...as, "bash", "-c", plant, "plant", t, outside);
    const module = JSON.stringify(new URL("./agent-files.ts", import.meta.url).href);
    const args = trees.map((t) => JSON.stringify(t)).join(", ");
    run(...as, process.execPath, "-e", `import(${module}).then((m) => m.removeTree(${args}))`);
    for (const t of trees) expect(existsSync(t)).toBe(false);
    expect(readFileSync(path.join(outside, "keep.txt"), "utf8")).toBe("kept\n");
    expect(statSync(outside).mode & 0o777).toBe(0o555);
  });
});
