import {
  FileStatus,
  type CheckResult,
  type FileChange,
  type WorkspaceChange,
} from "../../gen/conductor/v1/task_pb.js";
import { count, duration, oneLine, pathText } from "./format.ts";

/** A commit as git abbreviates it by default: its first 7 hex digits ("-" when unset). */
export const shortCommit = (sha: string): string => sha.slice(0, 7) || "-";

/** A file's status as `git diff --name-status` letters it: A, M, D, R, T. */
export function statusLetter(s: FileStatus): string {
  const letters: Partial<Record<FileStatus, string>> = {
    [FileStatus.ADDED]: "A",
    [FileStatus.MODIFIED]: "M",
    [FileStatus.DELETED]: "D",
    [FileStatus.RENAMED]: "R",
    [FileStatus.TYPE_CHANGED]: "T",
  };
  return letters[s] ?? "?";
}

/** A file's path, a rename as git shows it: `src/{old.ts => new.ts}`, or `old => new`. */
export function filePath(f: Pick<FileChange, "path" | "oldPath">): string {
  const [a, b] = [pathText(f.oldPath), pathText(f.path)];
  if (!a || a === b) return b;
  // The common folder before, and the common "/…" after, as git's pprint_rename keeps them.
  let pre = 0;
  for (let i = 0; i < Math.min(a.length, b.length) && a[i] === b[i]; i++)
    if (a[i] === "/") pre = i + 1;
  let post = 0;
  const room = Math.min(a.length, b.length) - pre;
  for (let i = 1; i <= room && a[a.length - i] === b[b.length - i]; i++)
    if (a[a.length - i] === "/") post = i;
  if (pre === 0 && post === 0) return `${a} => ${b}`;
  const mid = (s: string) => s.slice(pre, s.length - post);
  return `${a.slice(0, pre)}{${mid(a)} => ${mid(b)}}${a.slice(a.length - post)}`;
}

/** Lines added and deleted over `files`. */
function totals(files: readonly FileChange[]): { added: bigint; deleted: bigint } {
  let added = 0n;
  let deleted = 0n;
  for (const f of files) {
    added += f.additions;
    deleted += f.deletions;
  }
  return { added, deleted };
}

/** `conductor/t-1 · 1a2b3c4..5d6e7f8 · pushed · partial`: where a change is. */
export function changeHead(c: WorkspaceChange): string {
  return [
    c.branch || "-",
    `${shortCommit(c.baseCommit)}..${shortCommit(c.headCommit)}`,
    ...(c.pushed ? ["pushed"] : []),
    ...(c.partial ? ["partial"] : []),
  ].join(" · ");
}

/**
 * A change as `get` and `watch` show it: where it is, then one line per file (status letter,
 * path, +/-), at most `maxFiles` of them and then how many more.
 */
export function changeLines(c: WorkspaceChange, maxFiles = 50): string[] {
  const rows: [string, string][] = [
    ["repository", c.repository || "-"],
    ["branch", `${c.branch || "-"} (${c.pushed ? "pushed" : "not pushed"})`],
    ["commits", `${shortCommit(c.baseCommit)}..${shortCommit(c.headCommit)}`],
  ];
  if (c.partial)
    rows.push(["partial", "the attempt ended before the agent finished; its work so far is here"]);
  const missed = Math.max(c.notCommittedTotal, c.notCommitted.length);
  if (missed > 0)
    rows.push([
      "not committed",
      `${count(missed)} path${missed === 1 ? "" : "s"} not committed (too big, unreadable, or past PATH_MAX): ${c.notCommitted
        .slice(0, 3)
        .map((p) => oneLine(p, 80))
        .join(", ")}${missed > 3 ? ", …" : ""}`,
    ]);
  const total = Math.max(c.filesTotal, c.files.length);
  if (total === 0) {
    rows.push(["files", "none: the task changed nothing"]);
  } else {
    const { added, deleted } = totals(c.files);
    const of = c.files.length < total ? ` (lines of the first ${count(c.files.length)})` : "";
    rows.push(["files", `${count(total)} changed, +${count(added)} −${count(deleted)}${of}`]);
  }
  const width = Math.max(...rows.map(([k]) => k.length)) + 2;
  const lines = rows.map(([k, v]) => `${k.padEnd(width)}${v}`);
  const shown = c.files.slice(0, maxFiles);
  const paths = shown.map(filePath);
  const pathWidth = Math.min(60, Math.max(0, ...paths.map((p) => p.length)));
  shown.forEach((f, i) => {
    const lines_ = f.binary ? "binary" : `+${count(f.additions)} −${count(f.deletions)}`;
    lines.push(`  ${statusLetter(f.status)}  ${paths[i]!.padEnd(pathWidth)}  ${lines_}`);
  });
  if (total > shown.length) lines.push(`  … and ${count(total - shown.length)} more`);
  return lines;
}

/**
 * A task's check results, one line each (✓/✗, command, exit code, duration), a failed one
 * followed by the last `tailLines` lines of its output. `planned` (the spec's number of
 * checks) says how many did not run after a failure.
 */
export function checkLines(checks: readonly CheckResult[], planned = 0, tailLines = 10): string[] {
  const lines: string[] = [];
  for (const c of checks) {
    const took = duration(Number(c.durationMs));
    const how = c.timedOut
      ? `timed out after ${took}`
      : c.exitCode < 0
        ? `did not finish (killed, or could not start) · ${took}`
        : `exit ${c.exitCode} · ${took}`;
    lines.push(`${c.passed ? "✓" : "✗"} ${oneLine(c.command, 100)}  ${how}`);
    if (!c.passed) {
      const tail = c.outputTail.replace(/\s+$/, "").split(/\r?\n/).slice(-tailLines);
      for (const l of tail) if (tail.length > 1 || l) lines.push(`    ${l.trimEnd()}`);
    }
  }
  const skipped = planned - checks.length;
  if (skipped > 0 && checks.some((c) => !c.passed))
    lines.push(`· ${skipped} more did not run (a check failed)`);
  return lines;
}

/**
 * A change as `git diff --stat` shows it: one line per file (its path, `| N +++---`, or `Bin`
 * for a binary file), then `N files changed, X insertions(+), Y deletions(-)`, then the branch
 * and base..head. `width` is the line width the bars are scaled to.
 */
export function diffStat(c: WorkspaceChange, width = 80): string[] {
  const maxName = 50;
  const names = c.files.map((f) => {
    const name = filePath(f);
    return name.length > maxName ? `...${name.slice(name.length - maxName + 3)}` : name;
  });
  const nameWidth = Math.max(0, ...names.map((n) => n.length));
  const counts = c.files.map((f) => (f.binary ? "Bin" : String(f.additions + f.deletions)));
  const countWidth = Math.max(0, ...counts.map((n) => n.length));
  const maxChange = Math.max(
    0,
    ...c.files.filter((f) => !f.binary).map((f) => Number(f.additions + f.deletions)),
  );
  // " name | count bar": what is left of `width` is the bar's, at least 10 columns.
  const barWidth = Math.max(10, width - nameWidth - countWidth - 5);
  const lines = c.files.map((f, i) => {
    const head = ` ${names[i]!.padEnd(nameWidth)} | ${counts[i]!.padStart(countWidth)}`;
    if (f.binary) return head;
    const [plus, minus] = bars(Number(f.additions), Number(f.deletions), barWidth, maxChange);
    const bar = "+".repeat(plus) + "-".repeat(minus);
    return bar ? `${head} ${bar}` : head;
  });
  const total = Math.max(c.filesTotal, c.files.length);
  if (total > c.files.length) lines.push(` … and ${count(total - c.files.length)} more files`);
  const { added, deleted } = totals(c.files);
  const parts = [`${count(total)} file${total === 1 ? "" : "s"} changed`];
  // As git: insertions unless only deletions, deletions unless only insertions.
  if (added > 0n || deleted === 0n)
    parts.push(`${count(added)} insertion${added === 1n ? "" : "s"}(+)`);
  if (deleted > 0n || added === 0n)
    parts.push(`${count(deleted)} deletion${deleted === 1n ? "" : "s"}(-)`);
  const of = total > c.files.length ? ` (lines of the first ${count(c.files.length)} files)` : "";
  lines.push(` ${parts.join(", ")}${of}`);
  lines.push(` ${changeHead(c)}`);
  return lines;
}

/** The +++ and --- of one file's bar, scaled as git scales them when `max` overflows `width`. */
function bars(added: number, deleted: number, width: number, max: number): [number, number] {
  if (max <= width) return [added, deleted];
  const scale = (n: number) => (n === 0 ? 0 : 1 + Math.floor((n * (width - 1)) / max));
  let total = scale(added + deleted);
  if (total < 2 && added > 0 && deleted > 0) total = 2;
  if (added < deleted) {
    const plus = scale(added);
    return [plus, total - plus];
  }
  const minus = scale(deleted);
  return [total - minus, minus];
}
