import type { Cache } from "./cache.ts";
import type { Git } from "./git.ts";
import type { FileChange, FileStatus } from "./types.ts";

const DIFF = ["diff", "-z", "-M", "--no-ext-diff", "--no-textconv", "--no-color"];

const STATUS: Record<string, FileStatus> = {
  A: "added",
  M: "modified",
  D: "deleted",
  R: "renamed",
  T: "type_changed",
};

/**
 * The files that differ between `base` and `head` in the cache, renames detected (-M): status
 * from `git diff --raw`, line counts from `--numstat` (binary files: 0 and 0, `binary` set).
 */
export async function changedFiles(
  git: Git,
  cache: Cache,
  base: string,
  head: string,
  signal?: AbortSignal,
): Promise<FileChange[]> {
  if (base === head) return [];
  const r = await git.run(
    [...DIFF, "--raw", "--numstat", "--no-abbrev", base, head],
    cache.call(signal),
  );
  return parseDiff(r.stdout.toString("utf8"));
}

/**
 * `git diff -z --raw --numstat` output: the raw records (`:<modes> <ids> <status>\0<path>\0`,
 * `<old>\0<new>\0` for renames), then the numstat records (`<add>\t<del>\t<path>\0`, or
 * `<add>\t<del>\t\0<old>\0<new>\0`; `-\t-` for binary files), in the same order.
 */
export function parseDiff(out: string): FileChange[] {
  const t = out.split("\0");
  let i = 0;
  const files: FileChange[] = [];
  while (i + 1 < t.length && (t[i] ?? "").startsWith(":")) {
    const letter = (t[i] ?? "").split(" ").at(-1)?.[0] ?? "";
    const two = letter === "R" || letter === "C";
    const file: FileChange = {
      path: t[i + (two ? 2 : 1)] ?? "",
      oldPath: letter === "R" ? (t[i + 1] ?? "") : "",
      status: letter === "C" ? "added" : (STATUS[letter] ?? "modified"), // (-M alone finds no copies)
      additions: 0,
      deletions: 0,
      binary: false,
    };
    files.push(file);
    i += two ? 3 : 2;
  }
  for (const f of files) {
    if (i + 1 >= t.length) break;
    const tok = t[i] ?? "";
    const a = tok.indexOf("\t");
    const b = tok.indexOf("\t", a + 1);
    const [add, del] = [tok.slice(0, a), tok.slice(a + 1, b)];
    i += tok.slice(b + 1) === "" ? 3 : 1; // a rename's paths follow on their own

    f.binary = add === "-" && del === "-";
    f.additions = f.binary ? 0 : Number(add);
    f.deletions = f.binary ? 0 : Number(del);
  }
  return files;
}
