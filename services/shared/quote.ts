/** How many characters of rejected input an error message quotes at most. */
export const QUOTE_CHARS = 64;

/**
 * Quotes input for an error message: at most a short prefix (JSON-escaped, so control
 * characters and NUL show), with the whole size when it was cut. An error never echoes a
 * megabyte of what it refuses (gRPC carries the message in a header).
 */
export function quote(input: string, max = QUOTE_CHARS): string {
  if (input.length <= max) return JSON.stringify(input);
  const prefix = Array.from(input.slice(0, max + 1))
    .slice(0, max)
    .join("");
  return `${JSON.stringify(prefix)}… (${Buffer.byteLength(input, "utf8")} bytes)`;
}
