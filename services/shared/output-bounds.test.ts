import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { AgentOutputSchema, TaskResultSchema } from "../../gen/conductor/v1/task_pb.js";
import { boundOutput, boundResult, cut, OUTPUT_LIMITS, pieces } from "./output-bounds.ts";

describe("output bounds", () => {
  it("cuts by UTF-8 bytes, never inside a character, and says how large the whole was", () => {
    const s = "é".repeat(10_000); // 20,000 bytes
    const short = cut(s, 1000, "7")!;
    expect(Buffer.byteLength(short)).toBeLessThanOrEqual(1000);
    expect(short).not.toContain("\uFFFD");
    expect(short).toMatch(
      /^é+\n\[… truncated by conductor: 20000 bytes in all; GetTaskOutput \(event_seq 7\)/,
    );
    expect(cut("small", 1000, "7")).toBeUndefined();
  });

  it("leaves a line that fits as it is, and cuts every field of one that does not", () => {
    const small = create(AgentOutputSchema, { type: "assistant", text: "hi", rawJson: '{"a":1}' });
    expect(boundOutput(small)).toBeUndefined();
    expect(small.truncated).toBe(false);

    const raw = JSON.stringify({ type: "assistant", text: "x".repeat(5_000_000) });
    const big = create(AgentOutputSchema, {
      type: "assistant",
      text: "x".repeat(5_000_000),
      rawJson: raw,
      toolCalls: Array.from({ length: 100 }, (_, i) => ({
        id: `t${i}`,
        name: "Write",
        inputJson: "y".repeat(50_000),
      })),
    });
    expect(boundOutput(big)).toBe(raw);
    expect(big.truncated).toBe(true);
    expect(Buffer.byteLength(big.text)).toBeLessThanOrEqual(OUTPUT_LIMITS.textBytes);
    expect(Buffer.byteLength(big.rawJson)).toBeLessThanOrEqual(OUTPUT_LIMITS.rawJsonBytes);
    expect(big.toolCalls).toHaveLength(OUTPUT_LIMITS.toolCalls);
    for (const c of big.toolCalls)
      expect(c.inputJson.length).toBeLessThanOrEqual(OUTPUT_LIMITS.toolInputBytes);
  });

  it("cuts a result's text and error, keeping the whole text", () => {
    const text = "r".repeat(1_000_000);
    const result = create(TaskResultSchema, { text, error: text, isError: true });
    expect(boundResult(result)).toBe(text);
    expect(result.truncated).toBe(true);
    expect(Buffer.byteLength(result.text)).toBeLessThanOrEqual(OUTPUT_LIMITS.resultTextBytes);
    expect(Buffer.byteLength(result.error)).toBeLessThanOrEqual(OUTPUT_LIMITS.resultErrorBytes);
    const fine = create(TaskResultSchema, { text: "ok" });
    expect(boundResult(fine)).toBeUndefined();
    expect(fine.truncated).toBe(false);
  });
});

describe("pieces", () => {
  it("splits a whole into pieces of at most 1 MiB that join to it, never inside a character", () => {
    // 4-byte characters (surrogate pairs) straddling every possible boundary.
    const whole = "a" + "😀".repeat(400_000) + "é".repeat(300_000);
    const parts = [...pieces(whole)];
    expect(parts.length).toBeGreaterThan(2);
    expect(parts.join("")).toBe(whole);
    for (const p of parts) {
      expect(Buffer.byteLength(p, "utf8")).toBeLessThanOrEqual(1024 * 1024);
      expect(Buffer.from(p, "utf8").toString("utf8")).toBe(p); // no lone surrogate
    }
    expect([...pieces("")]).toEqual([]);
  });
});
