import type { Readable } from "node:stream";

/**
 * The longest stdout line a run may print, in bytes. The CLI's stream-json lines carry tool
 * results (a file read whole, say) and stay well below it; without a bound, an agent writing
 * to its CLI's stdout without a newline would grow the AgentHost's memory until it dies.
 */
export const MAX_LINE_BYTES = 32 * 1024 * 1024;

/**
 * Splits a byte stream into UTF-8 lines ("\n", a trailing "\r" dropped), handing each to
 * onLine; the last unterminated piece counts as a line at the end. A line longer than
 * maxBytes calls onOverflow once, and nothing more is handed over (the rest is drained and
 * dropped). Resolves when the stream has ended or closed.
 */
export function splitLines(
  input: Readable,
  onLine: (line: string) => void,
  onOverflow: () => void,
  maxBytes = MAX_LINE_BYTES,
): Promise<void> {
  let parts: Buffer[] = [];
  let size = 0;
  let overflowed = false;
  const emit = (buf: Buffer) => {
    const text = buf.toString("utf8");
    onLine(text.endsWith("\r") ? text.slice(0, -1) : text);
  };
  input.on("data", (chunk: Buffer) => {
    if (overflowed) return;
    let start = 0;
    for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, nl);
      if (size + piece.length > maxBytes) break;
      emit(parts.length > 0 ? Buffer.concat([...parts, piece]) : piece);
      parts = [];
      size = 0;
      start = nl + 1;
    }
    const rest = chunk.subarray(start);
    if (size + rest.length > maxBytes) {
      overflowed = true;
      parts = [];
      onOverflow();
      return;
    }
    if (rest.length > 0) {
      parts.push(rest);
      size += rest.length;
    }
  });
  return new Promise((resolve) => {
    const done = () => {
      if (!overflowed && size > 0) emit(Buffer.concat(parts));
      parts = [];
      size = 0;
      resolve();
    };
    input.once("end", done);
    input.once("close", done);
  });
}
