// The fake model's script DSL: a JSON array of steps placed in the prompt between
// <fake-script> and </fake-script>. Pure functions only, so they are unit-tested directly.
// See docs/notes/fake-model.md for the DSL and how requests are classified.

/** Token usage a step reports; lets tests assert what the CLI's `result` line adds up. */
export interface Usage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens?: number;
  cache_read_input_tokens?: number;
}

/** An HTTP error a step answers with, in Anthropic's `{"type":"error","error":{…}}` shape. */
export interface ErrorSpec {
  status: number;
  type: string;
  message: string;
}

/** What a step does when it is not failing: one tool call, or the final text. */
export type Action =
  | { kind: "tool"; name: string; input: Record<string, unknown> }
  | { kind: "write"; path: string; content: string }
  | { kind: "bash"; command: string }
  | { kind: "text"; text: string };

/** One parsed step: the action plus the modifiers that apply to any step. */
export interface Step {
  action: Action | undefined; // undefined: only an error (or hang) was scripted
  error: ErrorSpec | undefined;
  failTimes: number | undefined; // with error + id: fail this many times, then do `action`
  id: string | undefined;
  delayMs: number;
  usage: Usage;
  hang: boolean;
}

/** Usage reported when a step names none: small and non-zero, so sums are visible. */
export const DEFAULT_USAGE: Usage = { input_tokens: 10, output_tokens: 5 };

/** Thrown for a malformed script; the server answers it as HTTP 400 so the CLI shows it. */
export class ScriptError extends Error {
  override name = "ScriptError";
}

const OPEN = "<fake-script>";
const CLOSE = "</fake-script>";
const ACTION_KEYS = ["write", "bash", "tool", "text"] as const;
const ALLOWED_KEYS = new Set<string>([
  ...ACTION_KEYS,
  "error",
  "delay_ms",
  "usage",
  "fail_times",
  "id",
  "hang",
]);

/**
 * Pulls the script out of prompt text; undefined when the text holds no <fake-script>.
 * Tags nest, so a step may carry a script for a subagent inside its own prompt string.
 */
export function extractScript(text: string): Step[] | undefined {
  const start = text.indexOf(OPEN);
  if (start < 0) return undefined;
  const end = matchingClose(text, start + OPEN.length);
  if (end < 0) throw new ScriptError(`${OPEN} without ${CLOSE}`);
  const raw = text.slice(start + OPEN.length, end);
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (e) {
    throw new ScriptError(`script is not JSON: ${(e as Error).message}`);
  }
  return parseSteps(json);
}

function matchingClose(text: string, from: number): number {
  let depth = 1;
  for (let i = from; i < text.length;) {
    const open = text.indexOf(OPEN, i);
    const close = text.indexOf(CLOSE, i);
    if (close < 0) return -1;
    if (open >= 0 && open < close) {
      depth++;
      i = open + OPEN.length;
    } else {
      if (--depth === 0) return close;
      i = close + CLOSE.length;
    }
  }
  return -1;
}

/**
 * The error a request for `step` answers with, or undefined to run its action. With
 * fail_times, counts per step id in `counts` (one map per server instance).
 */
export function failingError(step: Step, counts: Map<string, number>): ErrorSpec | undefined {
  if (step.error === undefined) return undefined;
  if (step.failTimes === undefined || step.id === undefined) return step.error;
  const done = counts.get(step.id) ?? 0;
  if (done >= step.failTimes) return undefined;
  counts.set(step.id, done + 1);
  return step.error;
}

/** Validates a decoded script strictly (unknown keys are errors, to catch typos). */
export function parseSteps(json: unknown): Step[] {
  if (!Array.isArray(json)) throw new ScriptError("script must be a JSON array of steps");
  return json.map((s: unknown, i) => parseStep(s, i));
}

function parseStep(raw: unknown, i: number): Step {
  const at = `step ${i}`;
  if (!isObject(raw)) throw new ScriptError(`${at}: must be an object`);
  for (const k of Object.keys(raw)) {
    if (!ALLOWED_KEYS.has(k)) throw new ScriptError(`${at}: unknown key "${k}"`);
  }
  const actions = ACTION_KEYS.filter((k) => raw[k] !== undefined);
  if (actions.length > 1) throw new ScriptError(`${at}: more than one of ${actions.join(", ")}`);
  const action = actions[0] === undefined ? undefined : parseAction(actions[0], raw, at);
  const error = raw.error === undefined ? undefined : parseError(raw.error, at);
  const failTimes = optInt(raw.fail_times, `${at}: fail_times`);
  const id = raw.id === undefined ? undefined : str(raw.id, `${at}: id`);
  const hang = raw.hang === undefined ? false : raw.hang === true;
  if (raw.hang !== undefined && typeof raw.hang !== "boolean") {
    throw new ScriptError(`${at}: hang must be a boolean`);
  }
  if (failTimes !== undefined && (error === undefined || id === undefined)) {
    throw new ScriptError(`${at}: fail_times needs "error" and "id"`);
  }
  if (error !== undefined && action !== undefined && failTimes === undefined) {
    throw new ScriptError(`${at}: "error" with an action needs fail_times`);
  }
  if (action === undefined && error === undefined && !hang) {
    throw new ScriptError(`${at}: needs one of write, bash, tool, text, error, hang`);
  }
  const usage = raw.usage === undefined ? DEFAULT_USAGE : parseUsage(raw.usage, at);
  const delayMs = optInt(raw.delay_ms, `${at}: delay_ms`) ?? 0;
  return { action, error, failTimes, id, delayMs, usage, hang };
}

function parseAction(key: (typeof ACTION_KEYS)[number], raw: Record<string, unknown>, at: string) {
  const v = raw[key];
  switch (key) {
    case "text":
      return { kind: "text", text: str(v, `${at}: text`) } as const;
    case "bash":
      return { kind: "bash", command: str(v, `${at}: bash`) } as const;
    case "write": {
      if (!isObject(v)) throw new ScriptError(`${at}: write must be {path, content}`);
      return {
        kind: "write",
        path: str(v.path, `${at}: write.path`),
        content: str(v.content, `${at}: write.content`),
      } as const;
    }
    case "tool": {
      if (!isObject(v)) throw new ScriptError(`${at}: tool must be {name, input}`);
      const input = v.input ?? {};
      if (!isObject(input)) throw new ScriptError(`${at}: tool.input must be an object`);
      return { kind: "tool", name: str(v.name, `${at}: tool.name`), input } as const;
    }
  }
}

function parseError(v: unknown, at: string): ErrorSpec {
  if (!isObject(v)) throw new ScriptError(`${at}: error must be {status, type, message}`);
  const status = optInt(v.status, `${at}: error.status`);
  if (status === undefined || status < 400 || status > 599) {
    throw new ScriptError(`${at}: error.status must be 400..599`);
  }
  const type = v.type === undefined ? "api_error" : str(v.type, `${at}: error.type`);
  const message = v.message === undefined ? "scripted error" : str(v.message, `${at}: message`);
  return { status, type, message };
}

function parseUsage(v: unknown, at: string): Usage {
  if (!isObject(v)) throw new ScriptError(`${at}: usage must be an object`);
  const u: Usage = {
    input_tokens: optInt(v.input_tokens, `${at}: usage.input_tokens`) ?? 0,
    output_tokens: optInt(v.output_tokens, `${at}: usage.output_tokens`) ?? 0,
  };
  const cc = optInt(v.cache_creation_input_tokens, `${at}: usage.cache_creation_input_tokens`);
  const cr = optInt(v.cache_read_input_tokens, `${at}: usage.cache_read_input_tokens`);
  if (cc !== undefined) u.cache_creation_input_tokens = cc;
  if (cr !== undefined) u.cache_read_input_tokens = cr;
  return u;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(v: unknown, what: string): string {
  if (typeof v !== "string") throw new ScriptError(`${what} must be a string`);
  return v;
}

function optInt(v: unknown, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
    throw new ScriptError(`${what} must be a non-negative integer`);
  }
  return v;
}

/** The placeholder a step's strings may hold for the latest tool result's text. */
export const LAST_TOOL_RESULT = "{{last_tool_result}}";

/**
 * The action with every LAST_TOOL_RESULT in its strings (write content and path, bash
 * command, text, tool input values at any depth) replaced by `result`: a scripted model can
 * act on what a tool returned, e.g. write a reply it received into a file.
 */
export function fillToolResult(action: Action | undefined, result: string): Action | undefined {
  if (action === undefined) return undefined;
  const fill = (v: unknown): unknown => {
    if (typeof v === "string") return v.split(LAST_TOOL_RESULT).join(result);
    if (Array.isArray(v)) return v.map(fill);
    if (isObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fill(x)]));
    return v;
  };
  return fill(action) as Action;
}
