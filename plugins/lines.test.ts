import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import { splitLines } from "./lines.ts";

/** Feeds chunks through splitLines with a small bound; returns the lines and overflows. */
async function feed(chunks: (string | Buffer)[], maxBytes = 8) {
  const input = new PassThrough();
  const lines: string[] = [];
  let overflows = 0;
  const done = splitLines(
    input,
    (l) => lines.push(l),
    () => overflows++,
    maxBytes,
  );
  for (const c of chunks) input.write(c);
  input.end();
  await done;
  return { lines, overflows };
}

describe("splitLines", () => {
  it("splits across chunks, drops a trailing CR, keeps an unterminated last line", async () => {
    expect(await feed(["ab", "c\nde\r\n", "\nf", "g"])).toEqual({
      lines: ["abc", "de", "", "fg"],
      overflows: 0,
    });
  });

  it("keeps a multi-byte character split between chunks whole", async () => {
    const euro = Buffer.from("€\n");
    expect(await feed([euro.subarray(0, 1), euro.subarray(1)])).toEqual({
      lines: ["€"],
      overflows: 0,
    });
  });

  it("takes a line of exactly the bound, and stops at the first longer one", async () => {
    expect(await feed(["12345678\n", "123", "456789", "\nafter\n"])).toEqual({
      lines: ["12345678"],
      overflows: 1,
    });
    expect(await feed(["123456789\n"])).toEqual({ lines: [], overflows: 1 });
  });
});
