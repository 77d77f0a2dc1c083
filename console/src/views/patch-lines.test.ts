import { describe, expect, it } from "vitest";
import { patchClasses } from "./patch-lines.ts";

describe("the patch view's colours", () => {
  it("marks added and deleted lines inside hunks only", () => {
    const patch = [
      "From 12b379f Mon Sep 17 00:00:00 2001",
      "Subject: [PATCH] edit",
      "---",
      " a.txt | 2 +-",
      "diff --git a/a.txt b/a.txt",
      "--- a/a.txt",
      "+++ b/a.txt",
      "@@ -1 +1 @@",
      "-old",
      "+new",
      " same",
      "-- ",
      "2.39.5",
    ];
    expect(patchClasses(patch)).toEqual([
      "",
      "",
      "",
      "",
      "",
      "",
      "",
      "hunk",
      "del",
      "add",
      "",
      "",
      "",
    ]);
  });
});
