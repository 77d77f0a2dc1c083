import type { Budget, Check, TaskSpec, Workspace } from "../../gen/conductor/v1/task_pb.js";
import { invalid } from "../shared/errors.ts";
import { quote } from "../shared/quote.ts";

/** Permission modes the CLI accepts. */
export const PERMISSION_MODES = [
  "default",
  "acceptEdits",
  "plan",
  "bypassPermissions",
  "dontAsk",
] as const;

/**
 * The upper bound of every size, count and duration in a TaskSpec (documented in task.proto
 * and the README). Each keeps an accepted task runnable: the prompt is one argument of the
 * CLI, and Linux refuses a single argument of 128 KiB or more (E2BIG); timers overflow past
 * 24.8 days; and a stored task must fit a 4 MiB gRPC response with room to spare.
 */
export const SPEC_LIMITS = {
  /** Hard ceiling of the prompt whatever orchestrator.max_prompt_bytes says (MAX_ARG_STRLEN − 1). */
  promptBytes: 128 * 1024 - 1,
  timeoutSeconds: 7 * 24 * 3600,
  maxAttempts: 100,
  maxTurns: 10_000,
  idempotencyKeyBytes: 256,
  modelBytes: 256,
  allowedTools: 128,
  toolBytes: 256,
  labels: 64,
  /** Labels a node_selector may name. */
  nodeSelector: 16,
  /** Most CPUs a task may ask for. */
  cpus: 100_000,
  labelKeyBytes: 128,
  labelValueBytes: 1024,
  pathBytes: 4096,
  refBytes: 256,
  checks: 16,
  dependsOn: 64,
  budgetUsd: 1_000_000,
  taskIdBytes: 128,
  checkCommandBytes: 4096,
  checkTimeoutSeconds: 24 * 3600,
} as const;

/** Limits a spec is checked against that come from configuration. */
export interface SpecLimits {
  maxPromptBytes: number;
}

/** A model name as the CLI's --model takes it (an alias, an id, a Bedrock/Vertex id or ARN). */
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._:/@[\]+-]*$/;
// eslint-disable-next-line no-control-regex
export const CONTROL = /[\u0000-\u001f\u007f]/;

/**
 * Checks a TaskSpec's own fields before anything is stored; each problem is an INVALID_ARGUMENT naming
 * the field and the bound, quoting at most a short prefix of the bad value. What passes can
 * be handed to the CLI: anything that could never run is refused here, not on every attempt.
 */
export function validateSpec(spec: TaskSpec | undefined, limits: SpecLimits): TaskSpec {
  if (!spec) throw invalid("spec is required");
  checkPrompt(spec.prompt, limits);
  if (!Number.isInteger(spec.priority) || spec.priority < 0 || spec.priority > 10) {
    throw invalid(
      `spec.priority must be between 0 and 10 (higher runs first), got ${spec.priority}`,
    );
  }
  range("timeout_seconds", spec.timeoutSeconds, SPEC_LIMITS.timeoutSeconds, "the default");
  range("max_attempts", spec.maxAttempts, SPEC_LIMITS.maxAttempts, "the default");
  range("max_turns", spec.maxTurns, SPEC_LIMITS.maxTurns, "no limit");
  // The type and its params are the task type registry's to check (TaskTypeRegistry.check).
  if (
    spec.permissionMode &&
    !(PERMISSION_MODES as readonly string[]).includes(spec.permissionMode)
  ) {
    throw invalid(
      `spec.permission_mode ${quote(spec.permissionMode)} is unknown; use one of ${PERMISSION_MODES.join(", ")}`,
    );
  }
  text("idempotency_key", spec.idempotencyKey, SPEC_LIMITS.idempotencyKeyBytes);
  text("model", spec.model, SPEC_LIMITS.modelBytes);
  if (spec.model && !MODEL_NAME.test(spec.model)) {
    throw invalid(
      `spec.model ${quote(spec.model)} is not a model name: use letters, digits and . _ : / @ [ ] + - (e.g. "sonnet" or "claude-sonnet-4-5"), starting with a letter or digit`,
    );
  }
  checkTools(spec.allowedTools);
  checkLabels(spec.labels);
  checkResources(spec);
  checkWorkspace(spec.workspace);
  checkChecks(spec.checks);
  checkDependsOn(spec);
  checkBudget(spec.budget);
  return spec;
}

/** A budget's caps: finite, not negative, bounded (a task's, or a group's). */
export function checkBudget(b: Budget | undefined) {
  if (!b) return;
  if (!Number.isFinite(b.maxUsd) || b.maxUsd < 0 || b.maxUsd > SPEC_LIMITS.budgetUsd)
    throw invalid(
      `spec.budget.max_usd must be from 0 (no cap) to ${SPEC_LIMITS.budgetUsd}, got ${b.maxUsd}`,
    );
  for (const [field, v] of [
    ["max_input_tokens", b.maxInputTokens],
    ["max_output_tokens", b.maxOutputTokens],
  ] as const) {
    if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER))
      throw invalid(`spec.budget.${field} must be from 0 (no cap) to 2^53 - 1, got ${v}`);
  }
}

/** `{{deps.ID.result}}` in a prompt: replaced by that dependency's result when an attempt starts. */
export const DEP_RESULT = /\{\{deps\.([^{}\s]+?)\.result\}\}/g;

function checkDependsOn(spec: TaskSpec) {
  const deps = spec.dependsOn;
  if (deps.length > SPEC_LIMITS.dependsOn) {
    throw invalid(
      `spec.depends_on has ${deps.length} entries, over the limit of ${SPEC_LIMITS.dependsOn}`,
    );
  }
  deps.forEach((id, i) => {
    if (!id) throw invalid(`spec.depends_on[${i}] is empty: give a task id`);
    text(`depends_on[${i}]`, id, SPEC_LIMITS.taskIdBytes);
  });
  const seen = new Set<string>();
  for (const id of deps) {
    if (seen.has(id)) throw invalid(`spec.depends_on names ${quote(id)} twice`);
    seen.add(id);
  }
  for (const [, id] of spec.prompt.matchAll(DEP_RESULT)) {
    if (!seen.has(id!)) {
      throw invalid(
        `spec.prompt refers to {{deps.${id!.slice(0, 64)}.result}}, but depends_on does not name that task`,
      );
    }
  }
}

/** URL schemes a git workspace may name (git's own transports; `ext::` and helpers are refused). */
const GIT_URL = /^(file|git|ssh|https):\/\/[^\s]+$/;
/** scp-like ssh addresses, as git reads them: `[user@]host:path` (never `ext::…`). */
const SCP_LIKE = /^([A-Za-z0-9._-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:(?!:)\S+$/;

/** The workspace's fields as far as they can be judged without the node (which checks the rest). */
function checkWorkspace(ws: Workspace | undefined) {
  switch (ws?.kind.case) {
    case "git": {
      const g = ws.kind.value;
      if (!g.repository) {
        throw invalid("spec.workspace.git.repository is required: a path on the node, or a URL");
      }
      text("workspace.git.repository", g.repository, SPEC_LIMITS.pathBytes);
      if (CONTROL.test(g.repository) || g.repository.startsWith("-")) {
        throw invalid(
          `spec.workspace.git.repository ${quote(g.repository)} is not a path or URL (it starts with "-" or holds a control character)`,
        );
      }
      if (
        !g.repository.startsWith("/") &&
        !GIT_URL.test(g.repository) &&
        !SCP_LIKE.test(g.repository)
      ) {
        throw invalid(
          `spec.workspace.git.repository ${quote(g.repository)} is neither an absolute path nor a file://, git://, ssh:// or https:// URL`,
        );
      }
      gitName("workspace.git.ref", g.ref);
      gitName("workspace.git.branch", g.branch);
      return;
    }
    case "hostPath": {
      const p = ws.kind.value.path;
      text("workspace.host_path.path", p, SPEC_LIMITS.pathBytes);
      if (!p.startsWith("/") || CONTROL.test(p)) {
        throw invalid(
          `spec.workspace.host_path.path ${quote(p)} must be an absolute path on the node, without control characters`,
        );
      }
      return;
    }
    default:
      return;
  }
}

/**
 * A ref or branch as git could take it (git-check-ref-format(1), rules 3–10): the node asks
 * git itself, this refuses early what git never would.
 */
function gitName(field: string, name: string) {
  if (!name) return;
  text(field, name, SPEC_LIMITS.refBytes);
  if (
    name.startsWith("-") ||
    CONTROL.test(name) ||
    /[\s~^:?*[\\]|\.\.|@\{|\/\/|^\/|\/$|\.$|\.lock$|^@$/.test(name)
  ) {
    const what = field.endsWith(".ref")
      ? "is not a branch, tag or commit id (revision expressions such as HEAD~1 are not taken: give the commit id)"
      : "is not a name git accepts (see git check-ref-format)";
    throw invalid(
      `spec.${field} ${quote(name)} ${what}: no spaces, ~ ^ : ? * [ \\, "..", "@{", leading "-" or "/", trailing "/", "." or ".lock"`,
    );
  }
}

function checkChecks(checks: Check[]) {
  if (checks.length > SPEC_LIMITS.checks) {
    throw invalid(
      `spec.checks has ${checks.length} entries, over the limit of ${SPEC_LIMITS.checks}`,
    );
  }
  checks.forEach((c, i) => {
    if (!c.command.trim())
      throw invalid(`spec.checks[${i}].command is empty: give a command, e.g. "npm test"`);
    text(`checks[${i}].command`, c.command, SPEC_LIMITS.checkCommandBytes);
    range(
      `checks[${i}].timeout_seconds`,
      c.timeoutSeconds,
      SPEC_LIMITS.checkTimeoutSeconds,
      "agent.check_timeout_seconds",
    );
  });
}

function checkPrompt(prompt: string, limits: SpecLimits) {
  if (!prompt.trim()) throw invalid("spec.prompt must not be empty: say what the agent should do");
  const bytes = Buffer.byteLength(prompt, "utf8");
  const max = Math.min(limits.maxPromptBytes, SPEC_LIMITS.promptBytes);
  if (bytes > max) {
    const why =
      max === limits.maxPromptBytes
        ? "orchestrator.max_prompt_bytes"
        : "the most one command-line argument of the CLI may hold";
    throw invalid(
      `spec.prompt is ${bytes} bytes, over the limit of ${max} (${why}); put large inputs in the workspace instead`,
    );
  }
  noNul("prompt", prompt);
}

function range(field: string, value: number, max: number, zero: string) {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw invalid(`spec.${field} must be between 0 (${zero}) and ${max}, got ${value}`);
  }
}

/** A free-form string field: bounded in bytes, and without NUL (no process argument holds one). */
function text(field: string, value: string, maxBytes: number) {
  const bytes = Buffer.byteLength(value, "utf8");
  if (bytes > maxBytes) {
    throw invalid(
      `spec.${field} is ${bytes} bytes, over the limit of ${maxBytes}: ${quote(value)}`,
    );
  }
  noNul(field, value);
}

function noNul(field: string, value: string) {
  const at = value.indexOf("\0");
  if (at !== -1) {
    throw invalid(
      `spec.${field} contains a NUL character (at offset ${at}), which no program argument can carry; remove it`,
    );
  }
}

function checkTools(tools: string[]) {
  if (tools.length > SPEC_LIMITS.allowedTools) {
    throw invalid(
      `spec.allowed_tools has ${tools.length} entries, over the limit of ${SPEC_LIMITS.allowedTools}`,
    );
  }
  tools.forEach((tool, i) => {
    const field = `allowed_tools[${i}]`;
    if (!tool.trim()) throw invalid(`spec.${field} is empty: name a tool, e.g. "Bash"`);
    text(field, tool, SPEC_LIMITS.toolBytes);
    if (CONTROL.test(tool)) {
      throw invalid(`spec.${field} ${quote(tool)} contains a control character (newline, tab, …)`);
    }
  });
}

/** Checks a map of labels named `field` (at most `most`, each key and value within bounds). */
export function checkLabels(
  labels: Record<string, string>,
  field = "spec.labels",
  most: number = SPEC_LIMITS.labels,
) {
  const entries = Object.entries(labels);
  if (entries.length > most) {
    throw invalid(`${field} has ${entries.length} labels, over the limit of ${most}`);
  }
  for (const [key, value] of entries) {
    if (!key.trim()) throw invalid(`${field} has an empty key`);
    if (Buffer.byteLength(key, "utf8") > SPEC_LIMITS.labelKeyBytes) {
      throw invalid(
        `${field} key ${quote(key)} is over the limit of ${SPEC_LIMITS.labelKeyBytes} bytes`,
      );
    }
    if (CONTROL.test(key)) {
      throw invalid(`${field} key ${quote(key)} contains a control character`);
    }
    const bytes = Buffer.byteLength(value, "utf8");
    if (bytes > SPEC_LIMITS.labelValueBytes) {
      throw invalid(
        `${field}[${quote(key)}] is ${bytes} bytes, over the limit of ${SPEC_LIMITS.labelValueBytes}: ${quote(value)}`,
      );
    }
    if (value.includes("\0")) throw invalid(`${field}[${quote(key)}] contains a NUL character`);
  }
}

/** What a task asks of its node: finite, not negative, bounded. */
function checkResources(spec: TaskSpec) {
  const r = spec.resources;
  if (r) {
    if (!Number.isFinite(r.cpus) || r.cpus < 0 || r.cpus > SPEC_LIMITS.cpus) {
      throw invalid(`spec.resources.cpus must be from 0 to ${SPEC_LIMITS.cpus}, got ${r.cpus}`);
    }
    if (r.memoryBytes < 0n) {
      throw invalid(`spec.resources.memory_bytes must be 0 or more, got ${r.memoryBytes}`);
    }
  }
  checkLabels(spec.nodeSelector, "spec.node_selector", SPEC_LIMITS.nodeSelector);
}
