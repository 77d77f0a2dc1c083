import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { TaskState, type TaskResult } from "../../gen/conductor/v1/task_pb.js";

/** A task state as a person reads it: "SUCCEEDED", "TIMED_OUT". */
export const stateName = (s: TaskState): string => TaskState[s] ?? `STATE_${s}`;

/** Columns padded to their widest cell (the last one is not padded). */
export function table(header: string[], rows: string[][]): string[] {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? "").length)));
  return all.map((r) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd(),
  );
}

/** US dollars with the digits that matter: $0, $0.00028, $0.0123, $1.23. */
export function usd(n: number): string {
  if (n === 0) return "$0";
  if (Math.abs(n) >= 1) return `$${n.toFixed(2)}`;
  return `$${Number(n.toPrecision(2))}`;
}

/** A count with thousands separators: 12,345. */
export function count(n: number | bigint): string {
  return n.toLocaleString("en-US");
}

/** A duration: 850 ms, 1.2 s, 3 min 4 s, 2 h 5 min. */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${Number(s.toPrecision(2))} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** Milliseconds since the epoch of a timestamp (undefined when unset). */
export function millis(t: Timestamp | undefined): number | undefined {
  return t && (t.seconds > 0n || t.nanos > 0)
    ? Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6)
    : undefined;
}

/** How long ago: "just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function ago(t: Timestamp | undefined, now = Date.now()): string {
  const at = millis(t);
  if (at === undefined) return "-";
  const s = Math.max(0, Math.round((now - at) / 1000));
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86_400)} d ago`;
}

/** A local date and time with how long ago it was. */
export function when(t: Timestamp | undefined): string {
  const at = millis(t);
  if (at === undefined) return "-";
  const d = new Date(at);
  const pad = (n: number) => String(n).padStart(2, "0");
  const local = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return `${local} (${ago(t)})`;
}

/** One line, at most `max` characters, for a table cell. */
/**
 * Text made safe for a terminal: every control character but newline and tab (ESC, CR,
 * backspace, BEL, DEL, the C1 range) written as a `\u00XX` escape, so nothing an agent wrote
 * (its text, a file name) can move the cursor, clear the screen or retitle the window. In JSON
 * text that escape is the same character, so JSON stays valid and unchanged in meaning.
 */
export function printable(s: string): string {
  return s.replace(UNPRINTABLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

// eslint-disable-next-line no-control-regex
const UNPRINTABLE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;

/** A file path as one line: quoted like git does (`"a\nb"`) when it holds a control character or a quote. */
export function pathText(p: string): string {
  // eslint-disable-next-line no-control-regex
  return /[\u0000-\u001f\u007f-\u009f"\\]/.test(p) ? JSON.stringify(p) : p;
}

export function oneLine(s: string, max: number): string {
  const flat = s.replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** Whether the model was used at all: turns, tokens or cost (a task cancelled early has none). */
function used(r: TaskResult): boolean {
  const u = r.usage;
  return (
    r.numTurns > 0 || r.costUsd > 0 || (u !== undefined && u.inputTokens + u.outputTokens > 0n)
  );
}

/**
 * What a run used, "3 turns · 1,234 tokens in, 56 out · $0.00028 · 1.2 s"; only the time when
 * the model was never used, and nothing when nothing ran.
 */
export function usage(r: TaskResult): string | undefined {
  const took = r.durationMs > 0n ? duration(Number(r.durationMs)) : undefined;
  if (!used(r)) return took && `ran ${took}`;
  return [
    `${r.numTurns} turn${r.numTurns === 1 ? "" : "s"}`,
    `${count(r.usage?.inputTokens ?? 0n)} tokens in, ${count(r.usage?.outputTokens ?? 0n)} out`,
    usd(r.costUsd),
    ...(took ? [took] : []),
  ].join(" · ");
}
