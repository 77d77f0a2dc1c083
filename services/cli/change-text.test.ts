import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  CheckResultSchema,
  FileStatus,
  WorkspaceChangeSchema,
} from "../../gen/conductor/v1/task_pb.js";
import { changeLines, checkLines, diffStat, filePath } from "./change-text.ts";
import { printable } from "./format.ts";

const BASE = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";
const HEAD = "5d6e7f8091a2b3c4d1a2b3c4d5e6f708192a3b4c";

interface FileInit {
  path: string;
  oldPath?: string;
  status?: FileStatus;
  additions?: number;
  deletions?: number;
  binary?: boolean;
}

function change(files: FileInit[], more: { filesTotal?: number; pushed?: boolean } = {}) {
  return create(WorkspaceChangeSchema, {
    repository: "/home/ada/src/app",
    baseCommit: BASE,
    headCommit: HEAD,
    branch: "conductor/t-1",
    files: files.map((f) => ({
      status: FileStatus.MODIFIED,
      ...f,
      additions: BigInt(f.additions ?? 0),
      deletions: BigInt(f.deletions ?? 0),
    })),
    filesTotal: more.filesTotal ?? files.length,
    committed: true,
    pushed: more.pushed ?? false,
  });
}

describe("filePath", () => {
  it.each([
    [{ path: "a.ts", oldPath: "" }, "a.ts"],
    [{ path: "new.md", oldPath: "old.md" }, "old.md => new.md"],
    [{ path: "docs/new.md", oldPath: "docs/old.md" }, "docs/{old.md => new.md}"],
    [{ path: "a/d/c.ts", oldPath: "a/b/c.ts" }, "a/{b => d}/c.ts"],
    [{ path: "lib/x.ts", oldPath: "src/x.ts" }, "{src => lib}/x.ts"],
  ])("%j → %s", (f, shown) => {
    expect(filePath(f)).toBe(shown);
  });
});

describe("diffStat", () => {
  it("prints a line per file, the totals and the branch, as git diff --stat", () => {
    const lines = diffStat(
      change([
        { path: "src/signup.ts", additions: 6, deletions: 2 },
        { path: "src/new.ts", additions: 3, status: FileStatus.ADDED },
        { path: "logo.png", binary: true, status: FileStatus.ADDED },
        {
          path: "docs/new.md",
          oldPath: "docs/old.md",
          status: FileStatus.RENAMED,
          deletions: 1,
        },
      ]),
    );
    expect(lines).toEqual([
      // As git: "Bin" widens the count column.
      " src/signup.ts           |   8 ++++++--",
      " src/new.ts              |   3 +++",
      " logo.png                | Bin",
      " docs/{old.md => new.md} |   1 -",
      " 4 files changed, 9 insertions(+), 3 deletions(-)",
      " conductor/t-1 · 1a2b3c4..5d6e7f8",
    ]);
  });

  it("scales the bars to the width, and counts as git does", () => {
    const lines = diffStat(
      change([
        { path: "big.ts", additions: 300, deletions: 100 },
        { path: "small.ts", additions: 1 },
      ]),
      40,
    );
    // 40 columns: " big.ts   | 400 " leaves 24 for the bar.
    expect(lines[0]).toBe(` big.ts   | 400 ${"+".repeat(18)}${"-".repeat(6)}`);
    expect(lines[1]).toBe(" small.ts |   1 +");
    expect(lines[2]).toBe(" 2 files changed, 301 insertions(+), 100 deletions(-)");
    expect(diffStat(change([{ path: "a", additions: 1 }]))[1]).toBe(
      " 1 file changed, 1 insertion(+)",
    );
    expect(diffStat(change([{ path: "a", deletions: 2 }]))[1]).toBe(
      " 1 file changed, 2 deletions(-)",
    );
    expect(diffStat(change([], { pushed: true }))).toEqual([
      " 0 files changed, 0 insertions(+), 0 deletions(-)",
      " conductor/t-1 · 1a2b3c4..5d6e7f8 · pushed",
    ]);
  });

  it("says how many files it does not list", () => {
    const lines = diffStat(change([{ path: "a", additions: 1 }], { filesTotal: 1201 }));
    expect(lines).toContain(" … and 1,200 more files");
    expect(lines).toContain(" 1,201 files changed, 1 insertion(+) (lines of the first 1 files)");
  });
});

describe("changeLines", () => {
  it("shows where the change is and each file with its status letter", () => {
    const lines = changeLines(
      change([
        { path: "src/signup.ts", additions: 6, deletions: 2 },
        { path: "logo.png", binary: true, status: FileStatus.ADDED },
        { path: "gone.ts", deletions: 9, status: FileStatus.DELETED },
      ]),
    );
    expect(lines).toEqual([
      "repository  /home/ada/src/app",
      "branch      conductor/t-1 (not pushed)",
      "commits     1a2b3c4..5d6e7f8",
      "files       3 changed, +6 −11",
      "  M  src/signup.ts  +6 −2",
      "  A  logo.png       binary",
      "  D  gone.ts        +0 −9",
    ]);
  });

  it("lists at most maxFiles, then how many more", () => {
    const files = Array.from({ length: 60 }, (_, i) => ({ path: `f${i}`, additions: 1 }));
    const lines = changeLines(change(files, { filesTotal: 75 }), 50);
    expect(lines.filter((l) => l.startsWith("  M  "))).toHaveLength(50);
    expect(lines.at(-1)).toBe("  … and 25 more");
  });

  it("says which paths git could not commit, and how many", () => {
    const c = change([{ path: "top.txt", additions: 1, status: FileStatus.ADDED }]);
    c.notCommitted = ["deep/one/", "closed/x", "a\nb", "fourth"];
    c.notCommittedTotal = 7;
    expect(changeLines(c)).toContain(
      "not committed  7 paths not committed (too big, unreadable, or past PATH_MAX): deep/one/, closed/x, a b, …",
    );
  });
});

describe("checkLines", () => {
  it("marks each check, and shows the end of a failed one's output", () => {
    const lines = checkLines(
      [
        create(CheckResultSchema, { command: "npm test", durationMs: 12_000n, passed: true }),
        create(CheckResultSchema, {
          command: "npm run lint",
          exitCode: 1,
          durationMs: 3400n,
          outputTail: "a\nb\nsrc/x.ts:1 error\n",
        }),
      ],
      3,
      2,
    );
    expect(lines).toEqual([
      "✓ npm test  exit 0 · 12 s",
      "✗ npm run lint  exit 1 · 3.4 s",
      "    b",
      "    src/x.ts:1 error",
      "· 1 more did not run (a check failed)",
    ]);
    const timedOut = create(CheckResultSchema, {
      command: "sleep 99",
      exitCode: -1,
      durationMs: 60_000n,
      timedOut: true,
    });
    expect(checkLines([timedOut])).toEqual(["✗ sleep 99  timed out after 1 min 0 s"]);
  });
});

describe("text an agent wrote, on a terminal", () => {
  it("quotes file names holding control characters, as git does", () => {
    expect(filePath({ path: "x\n  ✓ npm test  exit 0", oldPath: "" })).toBe(
      '"x\\n  ✓ npm test  exit 0"',
    );
    expect(filePath({ path: "plain/ü.txt", oldPath: "" })).toBe("plain/ü.txt");
  });

  it("writes escape sequences as \\u escapes, keeping newlines, tabs and JSON valid", () => {
    const evil = "evil\u001b[2J\u001b]0;PWNED\u0007\r\u009bx\tend\nnext";
    const safe = printable(evil);
    expect(safe).toBe("evil\\u001b[2J\\u001b]0;PWNED\\u0007\\u000d\\u009bx\tend\nnext");
    const asJson = JSON.stringify({ text: "a\u007fb\u0085c" });
    expect(JSON.parse(printable(asJson))).toEqual({ text: "a\u007fb\u0085c" });
  });
});
