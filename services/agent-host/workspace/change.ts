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

/** Most bytes of `git diff --raw --numstat` read whole (a change of ~100,000 files). */
export const MAX_DIFF_BYTES = 32 * 1024 * 1024;
/** Files listed of a change too big to read whole (its first ones, by path). */
const MAX_LISTED = 1000;

/**
 * The files that differ between `base` and `head` in the cache, renames detected (-M): status
 * from `git diff --raw`, line counts from `--numstat` (binary files: 0 and 0, `binary` set),
 * and how many. A change whose listing passes `maxBytes` (paths near PATH_MAX, by the tens of
 * thousands) is not held whole: its first MAX_LISTED files are listed with their status alone
 * (no line counts) and `git diff --shortstat` counts them all; memory stays bounded.
 */
export async function changedFiles(
  git: Git,
  cache: Cache,
  base: string,
  head: string,
  signal?: AbortSignal,
  maxBytes = MAX_DIFF_BYTES,
): Promise<{ files: FileChange[]; filesTotal: number }> {
  if (base === head) return { files: [], filesTotal: 0 };
  const range = ["--no-abbrev", base, head];
  const whole = await readUpTo(
    git.stream([...DIFF, "--raw", "--numstat", ...range], cache.call(signal)),
    maxBytes,
  );
  if (whole.complete) {
    const files = parseDiff(whole.bytes.toString("utf8"));
    return { files, filesTotal: files.length };
  }
  const raw = await readUpTo(
    git.stream([...DIFF, "--raw", ...range], cache.call(signal)),
    maxBytes,
  );
  // The last record read may be cut short: it goes.
  const files = parseDiff(raw.bytes.toString("utf8")).slice(0, raw.complete ? MAX_LISTED : -1);
  const stat = await git.text(["diff", "-M", "--shortstat", ...range], cache.call(signal));
  const total = Number(/(\d+) files? changed/.exec(stat)?.[1] ?? files.length);
  return { files: files.slice(0, MAX_LISTED), filesTotal: Math.max(total, files.length) };
}

/** What a stream holds up to `max` bytes; `complete` when it ended within them (then stopped). */
async function readUpTo(
  chunks: AsyncGenerator<Buffer>,
  max: number,
): Promise<{ bytes: Buffer; complete: boolean }> {
  const kept: Buffer[] = [];
  let size = 0;
  for await (const chunk of chunks) {
    if (size + chunk.length > max) {
      kept.push(chunk.subarray(0, max - size));
      return { bytes: Buffer.concat(kept), complete: false }; // leaving the loop stops git
    }
    kept.push(chunk);
    size += chunk.length;
  }
  return { bytes: Buffer.concat(kept), complete: true };
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
