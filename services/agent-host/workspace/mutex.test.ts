import { describe, expect, it } from "vitest";
import { KeyedMutex, Mutex } from "./mutex.ts";

describe("Mutex", () => {
  it("runs callers one at a time in the order they asked, also after a failure", async () => {
    const m = new Mutex();
    const log: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const a = m.run(async () => {
      log.push("a start");
      await gate;
      log.push("a end");
      throw new Error("a failed");
    });
    const b = m.run(async () => void log.push("b"));
    const c = m.run(async () => void log.push("c"));
    await Promise.resolve();
    expect(log).toEqual(["a start"]);
    release();
    await expect(a).rejects.toThrow("a failed");
    await Promise.all([b, c]);
    expect(log).toEqual(["a start", "a end", "b", "c"]);
  });

  it("gives up waiting when the signal aborts, without breaking the order of the rest", async () => {
    const m = new Mutex();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const log: string[] = [];
    const a = m.run(() => gate.then(() => void log.push("a")));
    const ac = new AbortController();
    const b = m.run(async () => void log.push("b"), ac.signal);
    const c = m.run(async () => void log.push("c"));
    ac.abort(new Error("gave up"));
    await expect(b).rejects.toThrow("gave up");
    expect(log).toEqual([]);
    release();
    await Promise.all([a, c]);
    expect(log).toEqual(["a", "c"]);
  });

  it("keeps a mutex per key only while someone holds or waits for it", async () => {
    const k = new KeyedMutex();
    const order: string[] = [];
    await Promise.all([
      k.run("x", async () => void order.push("x1")),
      k.run("x", async () => void order.push("x2")),
      k.run("y", async () => void order.push("y1")),
    ]);
    expect(order.sort()).toEqual(["x1", "x2", "y1"]);
    expect((k as unknown as { held: Map<string, unknown> }).held.size).toBe(0);
  });
});
