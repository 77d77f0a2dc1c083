import type { AgentOutput, TaskResult } from "../../gen/conductor/v1/task_pb.js";

/**
 * How much of an agent's output an event or a result carries (documented in task.proto). A
 * CLI may print a line of many megabytes (a tool result, a long answer); cut to these, every
 * WatchTask event and every Task stays far below a gRPC client's 4 MiB default, and the whole
 * is kept as an artifact that GetTaskOutput streams.
 */
export const OUTPUT_LIMITS = {
  textBytes: 16 * 1024,
  rawJsonBytes: 16 * 1024,
  toolInputBytes: 4 * 1024,
  toolNameBytes: 256,
  toolCalls: 64,
  typeBytes: 64,
  resultTextBytes: 64 * 1024,
  resultErrorBytes: 8 * 1024,
} as const;

/** Room kept for the marker at the end of a cut string. */
const MARKER_ROOM = 160;

/** The marker a cut string ends with; says how large the whole was and where to get it. */
export function marker(wholeBytes: number, seq: string): string {
  return `\n[… truncated by conductor: ${wholeBytes} bytes in all; GetTaskOutput (event_seq ${seq}) streams the whole]`;
}

/**
 * `s` cut to at most `maxBytes` of UTF-8 (never inside a character), ending with the marker;
 * undefined when it fits as it is.
 */
export function cut(s: string, maxBytes: number, seq: string): string | undefined {
  const bytes = Buffer.byteLength(s, "utf8");
  if (bytes <= maxBytes) return undefined;
  return utf8Prefix(s, Math.max(0, maxBytes - MARKER_ROOM)) + marker(bytes, seq);
}

/** The first `maxBytes` of `s` as UTF-8, never ending inside a character. */
export function utf8Prefix(s: string, maxBytes: number): string {
  return Buffer.from(s, "utf8")
    .subarray(0, maxBytes)
    .toString("utf8")
    .replace(/\uFFFD+$/, "");
}

/**
 * Cuts an output line's fields to OUTPUT_LIMITS, in place. Returns the whole line (as the CLI
 * printed it) when anything was cut, for the caller to keep; undefined when nothing was.
 */
export function boundOutput(out: AgentOutput): string | undefined {
  const whole = out.rawJson || out.text;
  let cutAny = false;
  const apply = (value: string, max: number): string => {
    const short = cut(value, max, "of this event");
    if (short === undefined) return value;
    cutAny = true;
    return short;
  };
  out.type = apply(out.type, OUTPUT_LIMITS.typeBytes);
  out.text = apply(out.text, OUTPUT_LIMITS.textBytes);
  out.rawJson = apply(out.rawJson, OUTPUT_LIMITS.rawJsonBytes);
  for (const list of ["toolCalls", "deniedToolCalls"] as const) {
    if (out[list].length > OUTPUT_LIMITS.toolCalls) {
      out[list] = out[list].slice(0, OUTPUT_LIMITS.toolCalls);
      cutAny = true;
    }
    for (const call of out[list]) {
      call.id = apply(call.id, OUTPUT_LIMITS.toolNameBytes);
      call.name = apply(call.name, OUTPUT_LIMITS.toolNameBytes);
      call.inputJson = apply(call.inputJson, OUTPUT_LIMITS.toolInputBytes);
      call.denial = apply(call.denial, OUTPUT_LIMITS.textBytes);
    }
  }
  if (!cutAny) return undefined;
  out.truncated = true;
  return whole;
}

/**
 * Cuts a result's text and error to OUTPUT_LIMITS, in place. Returns the whole text (or the
 * whole error, when only that was cut), kept as the task's result artifact (event_seq 0);
 * undefined when nothing was cut.
 */
export function boundResult(result: TaskResult): string | undefined {
  const whole = result.text;
  const wholeError = result.error;
  const text = cut(result.text, OUTPUT_LIMITS.resultTextBytes, "0");
  const error = cut(result.error, OUTPUT_LIMITS.resultErrorBytes, "0");
  if (text !== undefined) result.text = text;
  if (error !== undefined) result.error = error;
  if (text === undefined && error === undefined) return undefined;
  result.truncated = true;
  // A failed CLI's error is its result text; an error cut on its own is kept instead.
  return text !== undefined ? whole : wholeError;
}

/** UTF-16 code units per piece: at most 3 UTF-8 bytes each (4 per surrogate pair), under 1 MiB. */
const PIECE_UNITS = 256 * 1024;

/**
 * `whole` in pieces of at most 1 MiB of UTF-8 each, never splitting a surrogate pair; the
 * pieces joined are `whole`. For sending a whole that would not fit one message.
 */
export function* pieces(whole: string): Generator<string> {
  for (let from = 0; from < whole.length;) {
    let to = Math.min(whole.length, from + PIECE_UNITS);
    const last = whole.charCodeAt(to - 1);
    if (to < whole.length && last >= 0xd800 && last <= 0xdbff) to--; // keep the pair whole
    yield whole.slice(from, to);
    from = to;
  }
}
