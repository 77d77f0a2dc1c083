import { validate, version } from "uuid";
import { describe, expect, it } from "vitest";
import { timeOrderedId } from "./ids.ts";

describe("timeOrderedId", () => {
  it("makes UUIDv7s that only grow, many to a millisecond, and never repeat", () => {
    const t0 = Date.now();
    const ids = Array.from({ length: 20_000 }, () => timeOrderedId());
    for (const id of ids.slice(0, 300)) {
      expect(validate(id)).toBe(true);
      expect(version(id)).toBe(7);
    }
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true);
    // Their first 48 bits are the millisecond they were made in (RFC 9562 §5.7).
    const ms = Number.parseInt(ids[0]!.replace("-", "").slice(0, 12), 16);
    expect(ms).toBeGreaterThanOrEqual(t0);
    expect(ms).toBeLessThanOrEqual(Date.now());
  });
});
