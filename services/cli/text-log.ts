/**
 * Turns the logger's JSON lines into lines a person reads in a terminal:
 * `12:03:04 WARN  agent-host  agent failed  agent_id=agent-2 error="…"`.
 * The JSON stays the format for files, pipes and log collectors.
 */
export function textLogWriter(write: (s: string) => void): (jsonLine: string) => void {
  return (jsonLine) => {
    let record: Record<string, unknown>;
    try {
      record = JSON.parse(jsonLine) as Record<string, unknown>;
    } catch {
      write(jsonLine);
      return;
    }
    const { time, level, msg, service, node: _node, trace_id: _t, span_id: _s, ...rest } = record;
    const clock = typeof time === "string" ? time.slice(11, 19) : "";
    const fields = Object.entries(rest)
      .map(([k, v]) => `${k}=${show(v)}`)
      .join(" ");
    const who = typeof service === "string" ? `${service}  ` : "";
    write(
      `${clock} ${String(level).toUpperCase().padEnd(5)} ${who}${String(msg)}${fields ? `  ${fields}` : ""}\n`,
    );
  };
}

function show(v: unknown): string {
  if (typeof v === "string") return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (v && typeof v === "object" && "message" in v) return JSON.stringify(String(v.message));
  return JSON.stringify(v);
}
