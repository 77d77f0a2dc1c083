import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { follow } from "./follow.ts";

const FAST = { first: 1, max: 4 };

describe("follow", () => {
  it("reopens a broken stream with growing waits, resumes where it was, and ends with it", async () => {
    const opened: number[] = [];
    const got: number[] = [];
    const waits: number[] = [];
    let next = 0;
    await follow(
      async function* () {
        opened.push(next);
        // Each opening yields one message, then breaks; the fourth ends cleanly.
        yield next++;
        if (opened.length < 4) throw new ConnectError("gone", Code.Unavailable);
      },
      { message: (m) => got.push(m), broken: (_e, ms) => waits.push(ms) },
      new AbortController().signal,
      FAST,
    );
    expect(opened).toEqual([0, 1, 2, 3]);
    expect(got).toEqual([0, 1, 2, 3]);
    expect(waits).toEqual([1, 1, 1]); // a message came each time: the wait starts over
  });

  it("doubles the wait up to its bound while nothing comes, and stops when aborted", async () => {
    const stop = new AbortController();
    const waits: number[] = [];
    await follow(
      // eslint-disable-next-line require-yield
      async function* () {
        throw new ConnectError("down", Code.Unavailable);
      },
      {
        message: () => undefined,
        broken: (_e, ms) => {
          waits.push(ms);
          if (waits.length === 5) stop.abort();
        },
      },
      stop.signal,
      FAST,
    );
    expect(waits).toEqual([1, 2, 4, 4, 4]);
  });
});
