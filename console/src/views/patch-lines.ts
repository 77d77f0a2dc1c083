// The patch view's colouring of `git format-patch` output.

/**
 * How each line of `git format-patch` output is shown: only lines inside a hunk are added or
 * deleted ones (a commit's `---` line, the `--` signature line and file headers are not).
 */
export function patchClasses(lines: string[]): string[] {
  let inHunk = false;
  return lines.map((l) => {
    if (l.startsWith("@@")) {
      inHunk = true;
      return "hunk";
    }
    if (l.startsWith("diff --git ") || l.startsWith("From ") || l === "-- ") inHunk = false;
    if (!inHunk) return "";
    return l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : "";
  });
}
