import { create, fromJson, toBinary, type JsonObject } from "@bufbuild/protobuf";
import { StructSchema } from "@bufbuild/protobuf/wkt";
import {
  TaskResultSchema,
  ErrorKind,
  TaskState,
  type AgentOutput,
  type TaskResult,
  type TaskSpec,
  type ToolCall,
} from "../../gen/conductor/v1/task_pb.js";
import type { ExecRequest, Execution, Mount } from "../../plugins/runtime.ts";
import { RUN_KEY_VARIABLE } from "../broker/access.ts";
import type { ModelPrice } from "../shared/prices.ts";
import { compileResultSchema, tooDeep, type ResultSchema } from "../shared/result-schema.ts";
import { StreamJsonReader } from "./stream-json.ts";

/** The agent settings a run needs, already validated (see Config.agent). */
export interface RunSettings {
  claudePath: string;
  model: string;
  permissionMode: string;
  allowedTools: string[];
  idleTimeoutMs: number;
  /**
   * Once the result line is in, what of the run still runs gets SIGTERM at once and SIGKILL this
   * many ms later (agent.result_grace_seconds).
   */
  resultGraceMs: number;
  defaultTimeoutMs: number;
  apiKey: string;
  baseUrl: string;
  /** The CLI's own API retries (CLAUDE_CODE_MAX_RETRIES); negative keeps its default. */
  maxApiRetries: number;
  /** USD per million tokens by model, for the model proxy's metering (agent.prices). */
  prices?: Readonly<Record<string, ModelPrice>> | undefined;
  /** Tools always allowed on top of the spec's or the default list (e.g. the Broker's MCP tools). */
  alwaysAllowedTools?: string[];
  /** Arguments appended after all others (e.g. --mcp-config for the Broker tools). */
  extraArgs?: string[];
}

/** Where the run happens: the agent's workspace and its own CLI config folder. */
export interface RunPlace {
  agentId: string;
  taskId: string;
  workspace: string;
  configDir: string;
  /** The agent's own folder; every process of its runs carries it (CONDUCTOR_AGENT_DIR). */
  agentDir: string;
  /** Folders the run's execs bind besides the sandbox's own (the task's worktree or host folder). */
  mounts?: Mount[];
}

/** Carry on with an earlier attempt's Claude session (`--resume`), told this instead of the prompt. */
export interface Resume {
  sessionId: string;
  prompt: string;
}

/** How a run ended: a final task state and the result to record. */
export interface RunOutcome {
  state: TaskState;
  result: TaskResult;
  /** The failure cannot succeed on another attempt (the CLI cannot run with these arguments). */
  permanent?: boolean;
  /** The runtime ended the run's whole sandbox (ExitStatus.sandboxKilled). */
  sandboxKilled?: boolean;
}

/** The longest delay setTimeout keeps (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Why a run was stopped from outside. */
export type StopReason = "cancelled" | "timeout" | "idle" | "result" | "unreadable";

/**
 * Builds the CLI's command line for a task spec. Every option's value is joined to it
 * (`--model=…`), and the prompt comes last after `--`, so nothing a spec holds is ever read
 * as an option: a prompt like "- fix the failing test" is the prompt.
 */
export function claudeArgv(
  spec: TaskSpec,
  s: RunSettings,
  resume?: Resume,
  resultSchema?: ResultSchema,
): string[] {
  const argv = [s.claudePath, "-p", "--output-format", "stream-json", "--verbose"];
  if (resume) argv.push(`--resume=${resume.sessionId}`);
  const model = spec.model || s.model;
  if (model) argv.push(`--model=${model}`);
  if (spec.maxTurns > 0) argv.push(`--max-turns=${spec.maxTurns}`);
  argv.push(`--permission-mode=${spec.permissionMode || s.permissionMode}`);
  // No settings file is read (user, project or local: hooks, env, apiKeyHelper, permissions):
  // what a run may do is its task's, and nothing an earlier run wrote in the agent's folders
  // runs in a later one, with that run's key (see resetConfig in runs.ts for the rest).
  argv.push("--setting-sources=");
  const tools = [
    ...(spec.allowedTools.length > 0 ? spec.allowedTools : s.allowedTools),
    ...(s.alwaysAllowedTools ?? []),
  ];
  if (tools.length > 0) argv.push(`--allowedTools=${tools.join(",")}`);
  // The CLI gives the agent a StructuredOutput tool of this input schema, and checks its answer.
  if (resultSchema) argv.push(`--json-schema=${resultSchema.json}`);
  argv.push(...(s.extraArgs ?? []));
  argv.push("--", resume ? resume.prompt : spec.prompt);
  return argv;
}

/** The CLI's whole environment: nothing of the host's leaks in but PATH. */
export function claudeEnv(
  place: RunPlace,
  s: RunSettings,
  hostPath: string,
): Record<string, string> {
  const env: Record<string, string> = {
    PATH: hostPath,
    HOME: place.configDir,
    CLAUDE_CONFIG_DIR: place.configDir,
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
    DISABLE_AUTOUPDATER: "1",
    CONDUCTOR_AGENT_ID: place.agentId,
    CONDUCTOR_AGENT_DIR: place.agentDir,
    CONDUCTOR_TASK_ID: place.taskId,
    // No memory the CLI keeps across sessions (projects/<project>/memory/): what one task
    // wrote there would instruct the model in every later task on the agent.
    CLAUDE_CODE_DISABLE_AUTO_MEMORY: "1",
  };
  if (s.apiKey) {
    env["ANTHROPIC_API_KEY"] = s.apiKey;
    // For the Broker tools' header (MCP_HEADERS): the CLI expands no ANTHROPIC_API_KEY there.
    env[RUN_KEY_VARIABLE] = s.apiKey;
  }
  if (s.baseUrl) env["ANTHROPIC_BASE_URL"] = s.baseUrl;
  if (s.maxApiRetries >= 0) env["CLAUDE_CODE_MAX_RETRIES"] = String(s.maxApiRetries);
  return env;
}

/** `p`'s value, or undefined once `signal` is aborted first. */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T | undefined> {
  if (signal.aborted) return Promise.resolve(undefined);
  return new Promise<T | undefined>((resolve, reject) => {
    const onAbort = () => resolve(undefined);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/**
 * Back-pressure from whoever reads a run's output: while `full()`, the CLI's output is not
 * read (it blocks on its next write) until `drained()` resolves; the idle watchdog waits too.
 */
export interface OutputFlow {
  full(): boolean;
  drained(): Promise<void>;
}

/**
 * Runs one task through the Claude Code CLI: every stream-json line goes to `onOutput`,
 * and the promise gives the outcome. Its first `result` line fixes the outcome and ends the
 * run at once: whatever of it still runs (a CLI that lingers, a background child holding its
 * stdout) is ended (SIGTERM, SIGKILL after resultGraceMs), and the promise resolves once it is
 * all gone, never waiting for the CLI's own exit. A watchdog ends a run that is silent for the
 * idle limit.
 */
export async function runClaude(opts: {
  spec: TaskSpec;
  /** JSON Schema (JSON text) the answer must match; empty or undefined: a free answer. */
  resultSchema?: string | undefined;
  settings: RunSettings;
  place: RunPlace;
  exec: (req: ExecRequest) => Promise<Execution>;
  hostPath: string;
  signal: AbortSignal;
  onStarted?: () => void;
  onOutput: (out: AgentOutput) => void;
  /**
   * Called once, at the run's first result line, with the outcome the promise will give (the
   * same object), while what still runs of the CLI is being ended: the outcome may be
   * recorded now, the run reaped after. Not called when the run was being stopped already
   * (cancelled, timed out) when the line came.
   */
  onResult?: (outcome: RunOutcome) => void;
  flow?: OutputFlow | undefined;
  resume?: Resume | undefined;
}): Promise<RunOutcome> {
  const { spec, settings: s, place } = opts;
  const started = Date.now();
  // A timer past 2^31-1 ms fires at once: no timeout may reach that (submit bounds it far below).
  const timeoutMs = Math.min(
    MAX_TIMER_MS,
    spec.timeoutSeconds > 0 ? spec.timeoutSeconds * 1000 : s.defaultTimeoutMs,
  );
  let schema: ResultSchema | undefined;
  try {
    schema = opts.resultSchema ? compileResultSchema(opts.resultSchema) : undefined;
  } catch (e) {
    const outcome = failed(
      `the task's result schema cannot be used: ${(e as Error).message}`,
      started,
    );
    outcome.result.errorKind = ErrorKind.INVALID_REQUEST;
    outcome.permanent = true;
    return outcome;
  }
  let execution: Execution;
  try {
    const starting = opts.exec({
      argv: claudeArgv(spec, s, opts.resume, schema),
      cwd: place.workspace,
      env: claudeEnv(place, s, opts.hostPath),
      marker: `CONDUCTOR_TASK_ID=${place.taskId}`,
      ...(place.mounts ? { mounts: place.mounts } : {}),
    });
    const begun = await untilAborted(starting, opts.signal);
    if (!begun) {
      // Stopped while the backend was still starting it (an engine that does not answer):
      // an exec that begins after all is ended at once.
      starting
        .then(
          (late) => late.kill(),
          () => undefined,
        )
        .catch(() => undefined);
      return ended(
        TaskState.CANCELLED,
        undefined,
        "cancelled while starting",
        started,
        [],
        ErrorKind.CANCELLED,
      );
    }
    execution = begun;
  } catch (cause) {
    // The backend could not exec (its engine, say): permanent only for arguments no process takes.
    const outcome = cannotStart(s.claudePath, cause, started);
    outcome.permanent = PERMANENT_EXEC.test(errorCode(cause));
    return outcome;
  }

  const reader = new StreamJsonReader();
  let result: TaskResult | undefined;
  /** The outcome a result line fixed (computed once: it edits the result). */
  let verdict: RunOutcome | undefined;
  let stopReason: StopReason | undefined;
  let killing: Promise<unknown> | undefined;
  const stop = (reason: StopReason, graceMs?: number) => {
    if (stopReason) return;
    stopReason = reason;
    // How it ended is read from execution.exited; a failed kill changes nothing there.
    killing = execution.kill(graceMs).catch(() => undefined);
  };
  let idleTimer = setTimeout(() => stop("idle"), s.idleTimeoutMs);
  const deadline = setTimeout(() => stop("timeout"), timeoutMs);
  const onAbort = () => stop("cancelled");
  if (opts.signal.aborted) onAbort();
  opts.signal.addEventListener("abort", onAbort);
  opts.onStarted?.();

  let printed = false;
  let paused = false;
  const resume = () => {
    paused = false;
    if (stopReason || result) return;
    idleTimer = setTimeout(() => stop("idle"), s.idleTimeoutMs);
    execution.resume();
  };
  /** What reading a line of the CLI threw (none should: a guard, so the AgentHost stays up). */
  let unreadable: unknown;
  const onLine = (line: string) => {
    if (!line.trim()) return;
    printed = true;
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => stop("idle"), s.idleTimeoutMs);
    const parsed = reader.read(line);
    opts.onOutput(parsed.output);
    if (opts.flow?.full() && !paused && !stopReason) {
      // The reader is behind: the CLI waits (and is not idle) until it has caught up.
      paused = true;
      clearTimeout(idleTimer);
      execution.pause();
      opts.flow.drained().then(resume, resume);
    }
    if (parsed.result && !result) {
      // The run is over: its outcome is this line's (trusted as before: the first result line,
      // usage and cost metered by the proxy, the answer checked), and nothing of it may linger.
      result = parsed.result;
      clearTimeout(idleTimer);
      const first = !stopReason;
      stop("result", s.resultGraceMs);
      if (first) {
        verdict = verdictOf(result, schema, reader.refusal);
        opts.onResult?.(verdict);
      }
    }
  };
  execution.onStdoutLine((line) => {
    if (unreadable !== undefined) return; // the run is being ended
    try {
      onLine(line);
    } catch (e) {
      if (verdict) return; // told already: the result line stands, the rest is only output
      unreadable = e ?? new Error("unknown");
      result = undefined;
      verdict = undefined;
      stopReason = undefined; // over any other: what ended the run is this
      stop("unreadable");
    }
  });

  const exit = await execution.exited;
  // A kill still under way (an engine call) must not reach the agent's next run.
  await killing;
  clearTimeout(idleTimer);
  clearTimeout(deadline);
  opts.signal.removeEventListener("abort", onAbort);
  // Without a result line, the denials seen so far are all there is to report.
  const denied = reader.deniedToolCalls();

  if (exit.spawnError) return cannotStart(s.claudePath, exit.spawnError, started, denied);
  if (stopReason === "cancelled")
    return ended(
      TaskState.CANCELLED,
      result,
      "cancelled while running",
      started,
      denied,
      ErrorKind.CANCELLED,
    );
  if (stopReason === "timeout") {
    return ended(
      TaskState.TIMED_OUT,
      result,
      `exceeded its timeout of ${timeoutMs / 1000} s; the CLI was ended`,
      started,
      denied,
      ErrorKind.TIMEOUT,
    );
  }
  if (stopReason === "unreadable") {
    const outcome = failed(
      `a line the CLI printed could not be read, and the run was ended: ${String(unreadable).slice(0, 500)}`,
      started,
      denied,
    );
    outcome.result.errorKind = ErrorKind.CLI_ERROR;
    return outcome;
  }
  if (result) return verdict ?? verdictOf(result, schema, reader.refusal);
  if (exit.lost) {
    const outcome = failed(`the run was ended by its runtime: ${exit.lost}`, started, denied);
    outcome.result.errorKind = ErrorKind.INFRASTRUCTURE;
    return outcome;
  }
  if (stopReason === "idle") {
    const outcome = failed(
      `the CLI printed nothing for ${s.idleTimeoutMs / 1000} s (agent.idle_timeout_seconds) and was ended`,
      started,
      denied,
    );
    outcome.result.errorKind = ErrorKind.TIMEOUT;
    return outcome;
  }
  const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
  const stderr = execution.stderrTail().trim().split("\n").slice(-5).join("\n");
  const outcome = failed(
    `the CLI ${how} without a result${stderr ? `: ${stderr}` : ""}`,
    started,
    denied,
  );
  if (!printed && !exit.signal && USAGE_ERROR.test(stderr)) {
    outcome.result.error = `the CLI refused its arguments, so no attempt can succeed: ${stderr}`;
    outcome.result.errorKind = ErrorKind.INVALID_REQUEST;
    outcome.permanent = true;
  }
  if (exit.sandboxKilled) outcome.sandboxKilled = true;
  return outcome;
}

/**
 * A result line is the CLI's own verdict, though the run is ended after it. What kind of error
 * it was the model proxy knows better (runs.ts): it saw the API's answers.
 */
export function verdictOf(
  result: TaskResult,
  schema: ResultSchema | undefined,
  refusal: string,
): RunOutcome {
  if (result.isError) result.errorKind = ErrorKind.CLI_ERROR;
  // An answer is asked for by a schema alone; one the line has without (forged) is not kept.
  if (schema) checkStructured(result, schema, refusal);
  else delete result.structured;
  return { state: result.isError ? TaskState.FAILED : TaskState.SUCCEEDED, result };
}

/**
 * Most bytes of a structured answer, as JSON and as the google.protobuf.Struct it is sent as
 * (which takes up to ~5× the JSON for many small values): a result must fit any gRPC client's
 * 4 MiB.
 */
export const MAX_STRUCTURED_BYTES = 1024 * 1024;

/** The answer's size as JSON, or else as protobuf, when either is over MAX_STRUCTURED_BYTES. */
function oversize(structured: JsonObject): string | undefined {
  if (Buffer.byteLength(JSON.stringify(structured)) > MAX_STRUCTURED_BYTES) return "as JSON";
  const asProto = toBinary(StructSchema, fromJson(StructSchema, structured)).byteLength;
  return asProto > MAX_STRUCTURED_BYTES ? `as protobuf (${asProto} bytes)` : undefined;
}

/**
 * Fails a result whose structured answer is missing or does not match the task type's schema
 * (the CLI checks the StructuredOutput tool's input, but lets an agent that never gives one
 * finish). CLI_ERROR, so retried: another attempt may answer as asked. `refusal` is why the
 * CLI refused the agent's last structured answer, if it did.
 */
export function checkStructured(result: TaskResult, schema: ResultSchema, refusal: string): void {
  const refused = refusal ? `; the CLI refused its last one: ${refusal.slice(0, 1000)}` : "";
  let why: string | undefined;
  if (result.structured === undefined) why = `the agent gave no structured answer${refused}`;
  else {
    // Its depth first: only an answer of bounded depth can be measured (or sent) at all.
    const deep = tooDeep(result.structured);
    const over = deep ? undefined : oversize(result.structured);
    why =
      deep ??
      (over
        ? `the structured answer is over ${MAX_STRUCTURED_BYTES} bytes ${over}`
        : schema.mismatch(result.structured));
  }
  if (!why) return;
  delete result.structured;
  if (result.isError) {
    // Failed already: say so only when the answer is why (the CLI ran out of schema retries).
    if (refusal) result.error = `${MISMATCH}${why} (the CLI: ${result.error})`;
    return;
  }
  result.isError = true;
  result.error = `${MISMATCH}${why}`;
  result.errorKind = ErrorKind.CLI_ERROR;
}

const MISMATCH = "the answer does not match the result schema of the task's type: ";

/** Errors of a spawn that another attempt could get past (a busy machine), unlike E2BIG or ENOENT. */
const TRANSIENT_SPAWN = /\b(EAGAIN|EMFILE|ENFILE|ENOMEM|EBUSY|ETXTBSY|EINTR)\b/;
/** Exec failures that no retry gets past: an argument list too long, an argument with a NUL. */
const PERMANENT_EXEC = /^(E2BIG|ERR_INVALID_ARG_VALUE|ERR_INVALID_ARG_TYPE)$/;
/** How the CLI's option parser (commander) refuses a command line, before doing anything. */
const USAGE_ERROR =
  /^error: (unknown option|option '[^']*' argument|too many arguments|missing required argument)/m;

/**
 * The CLI could not be started at all. Permanent (not retried) unless the cause is a resource
 * the machine may have again: the argument list too long (E2BIG), the program missing
 * (ENOENT, exit 127 in a container) or an argument no process can take (a NUL) fail again.
 */
function cannotStart(
  claudePath: string,
  cause: unknown,
  started: number,
  denied: ToolCall[] = [],
): RunOutcome {
  const message = cause instanceof Error ? cause.message : String(cause);
  const outcome = failed(
    `cannot start the Claude Code CLI at ${claudePath}: ${message}`,
    started,
    denied,
  );
  outcome.permanent = !TRANSIENT_SPAWN.test(`${errorCode(cause)} ${message}`);
  outcome.result.errorKind = ErrorKind.INFRASTRUCTURE;
  return outcome;
}

function errorCode(cause: unknown): string {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" ? code : "";
}

function failed(error: string, started: number, denied: ToolCall[] = []): RunOutcome {
  return ended(TaskState.FAILED, undefined, error, started, denied);
}

/** An outcome without a result line, or one the watchdog overrules; `denied` as seen so far. */
function ended(
  state: TaskState,
  result: TaskResult | undefined,
  error: string,
  started: number,
  denied: ToolCall[] = [],
  errorKind = ErrorKind.CLI_ERROR,
): RunOutcome {
  const r =
    result ??
    create(TaskResultSchema, {
      durationMs: BigInt(Date.now() - started),
      deniedToolCalls: denied,
    });
  r.isError = true;
  r.error = error;
  r.errorKind = errorKind;
  return { state, result: r };
}
