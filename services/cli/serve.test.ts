// A serving process's log stays one JSON line per record: what libraries print on their own
// (console.error with a stack, Node's process warnings) goes into it, not around it.
import { describe, expect, it } from "vitest";
import { createLogger } from "../shared/log.ts";
import { captureStrayOutput } from "./serve.ts";

describe("captureStrayOutput", () => {
  it("logs console.error and process warnings as single JSON lines, and undoes itself", async () => {
    const lines: string[] = [];
    const before = { warning: process.listeners("warning"), error: console.error };
    const restore = captureStrayOutput(createLogger("info", {}, (l) => void lines.push(l)));
    try {
      const stack = new Error("write ECANCELED").stack;
      console.error("handler for rpc Watch failed", stack);
      const warned = new Promise((resolve) => process.once("warning", resolve));
      process.emitWarning("a timer too long", "TimeoutOverflowWarning");
      await warned;
    } finally {
      restore();
    }
    expect(lines.every((l) => l.endsWith("\n") && !l.slice(0, -1).includes("\n"))).toBe(true);
    const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(String(records[0]?.["text"])).toMatch(
      /^handler for rpc Watch failed Error: write ECANCELED\n {4}at /,
    );
    expect(records).toMatchObject([
      { level: "warn", msg: "library output" },
      {
        level: "warn",
        msg: "process warning",
        warning: "TimeoutOverflowWarning",
        text: "a timer too long",
      },
    ]);
    // Undone: Node's own warning printer is back, and console.error is what it was.
    expect(process.listeners("warning")).toEqual(before.warning);
    expect(console.error).toBe(before.error);
  });
});
