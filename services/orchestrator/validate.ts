import type { TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { invalid } from "../shared/errors.ts";

/** Task types the Orchestrator knows. */
export const TASK_TYPES = [
  "generic",
  "code_review",
  "refactor",
  "test_generation",
  "analysis",
] as const;

/** Permission modes the CLI accepts. */
export const PERMISSION_MODES = [
  "default",
  "acceptEdits",
  "plan",
  "bypassPermissions",
  "dontAsk",
] as const;

/** Limits a spec is checked against. */
export interface SpecLimits {
  maxPromptBytes: number;
}

/**
 * Checks a TaskSpec before anything is stored; each problem is an INVALID_ARGUMENT naming
 * the field and the allowed values.
 */
export function validateSpec(spec: TaskSpec | undefined, limits: SpecLimits): TaskSpec {
  if (!spec) throw invalid("spec is required");
  if (!spec.prompt.trim())
    throw invalid("spec.prompt must not be empty: say what the agent should do");
  const bytes = Buffer.byteLength(spec.prompt, "utf8");
  if (bytes > limits.maxPromptBytes) {
    throw invalid(
      `spec.prompt is ${bytes} bytes, over the limit of ${limits.maxPromptBytes} (orchestrator.max_prompt_bytes); put large inputs in the workspace instead`,
    );
  }
  if (!Number.isInteger(spec.priority) || spec.priority < 0 || spec.priority > 10) {
    throw invalid(
      `spec.priority must be between 0 and 10 (higher runs first), got ${spec.priority}`,
    );
  }
  if (spec.timeoutSeconds < 0) {
    throw invalid(
      `spec.timeout_seconds must be 0 (the default) or positive, got ${spec.timeoutSeconds}`,
    );
  }
  if (spec.maxAttempts < 0 || spec.maxAttempts > 100) {
    throw invalid(
      `spec.max_attempts must be between 0 (the default) and 100, got ${spec.maxAttempts}`,
    );
  }
  if (spec.maxTurns < 0)
    throw invalid(`spec.max_turns must be 0 (no limit) or positive, got ${spec.maxTurns}`);
  if (spec.type && !(TASK_TYPES as readonly string[]).includes(spec.type)) {
    throw invalid(`spec.type "${spec.type}" is unknown; use one of ${TASK_TYPES.join(", ")}`);
  }
  if (
    spec.permissionMode &&
    !(PERMISSION_MODES as readonly string[]).includes(spec.permissionMode)
  ) {
    throw invalid(
      `spec.permission_mode "${spec.permissionMode}" is unknown; use one of ${PERMISSION_MODES.join(", ")}`,
    );
  }
  if (spec.idempotencyKey.length > 256)
    throw invalid("spec.idempotency_key must be at most 256 characters");
  for (const tool of spec.allowedTools) {
    if (!tool.trim()) throw invalid("spec.allowed_tools must not contain empty names");
  }
  return spec;
}
