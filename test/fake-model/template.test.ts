// The {{last_tool_result}} placeholder: a scripted step acting on what a tool returned.
import { describe, expect, it } from "vitest";
import { lastToolResult } from "./request.ts";
import { fillToolResult, LAST_TOOL_RESULT } from "./script.ts";

describe("{{last_tool_result}}", () => {
  it("is the text of the latest tool_result block, or empty before any", () => {
    expect(lastToolResult({ messages: [{ role: "user", content: "go" }] })).toBe("");
    const body = {
      messages: [
        { role: "user", content: "go" },
        { role: "user", content: [{ type: "tool_result", content: "first" }] },
        {
          role: "user",
          content: [
            {
              type: "tool_result",
              content: [
                { type: "text", text: "a" },
                { type: "text", text: "b" },
              ],
            },
          ],
        },
      ],
    };
    expect(lastToolResult(body)).toBe("a\nb");
  });

  it("fills every string of an action, at any depth", () => {
    const r = "Reply from agent-2: pong";
    expect(
      fillToolResult({ kind: "write", path: "r.txt", content: `got ${LAST_TOOL_RESULT}` }, r),
    ).toEqual({ kind: "write", path: "r.txt", content: `got ${r}` });
    expect(
      fillToolResult(
        {
          kind: "tool",
          name: "x",
          input: { a: [LAST_TOOL_RESULT], b: { c: LAST_TOOL_RESULT }, n: 1 },
        },
        r,
      ),
    ).toEqual({ kind: "tool", name: "x", input: { a: [r], b: { c: r }, n: 1 } });
    expect(fillToolResult(undefined, r)).toBeUndefined();
  });
});
