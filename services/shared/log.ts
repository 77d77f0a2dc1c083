import { isSpanContextValid, trace } from "@opentelemetry/api";

/** Levels in order; a logger prints its level and above. */
const LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof LEVELS)[number];

/** Logger writes structured JSON lines; one is made at start and passed in. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

/**
 * Makes a JSON-lines logger writing to `write` (stderr by default). A line written while a
 * span is active carries its `trace_id` and `span_id`, so logs and traces join up.
 */
export function createLogger(
  level: LogLevel = "info",
  base: Record<string, unknown> = {},
  write: (line: string) => void = (line) => process.stderr.write(line),
): Logger {
  const min = LEVELS.indexOf(level);
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (LEVELS.indexOf(lvl) < min) return;
    const span = trace.getActiveSpan()?.spanContext();
    const ids =
      span && isSpanContextValid(span) ? { trace_id: span.traceId, span_id: span.spanId } : {};
    const record = { time: new Date().toISOString(), level: lvl, msg, ...ids, ...base, ...fields };
    write(JSON.stringify(record, errorReplacer) + "\n");
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (fields) => createLogger(level, { ...base, ...fields }, write),
  };
}

/** A logger that drops everything, for tests and tools. */
export const silentLogger: Logger = createLogger("error", {}, () => {});

function errorReplacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? { name: value.name, message: value.message } : value;
}
