import type { TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { invalid } from "../shared/errors.ts";
import { quote } from "../shared/quote.ts";
import { compileResultSchema, type ResultSchema } from "../shared/result-schema.ts";
import { CONTROL, PERMISSION_MODES, SPEC_LIMITS } from "./validate.ts";

/** The kinds a parameter may be; TaskSpec.params carries every value as a string. */
export const PARAMETER_KINDS = ["string", "integer", "boolean", "enum", "list"] as const;
export type ParameterKind = (typeof PARAMETER_KINDS)[number];

/** A parameter's value as a type's prompt builder gets it. */
export type ParamValue = string | number | boolean | readonly string[];
export type ParamValues = Readonly<Record<string, ParamValue>>;

/** One parameter a type takes. */
export interface TaskTypeParameter {
  name: string;
  kind: ParameterKind;
  description?: string;
  /** A task must give it (no default then). */
  required?: boolean;
  /** Used when a task gives none, encoded as a task would give it ("42", "true", "a,b"). */
  default?: string;
  /** An enum's values. */
  values?: readonly string[];
}

/** What a prompt builder gets: the spec's prompt and the decoded parameters (defaults filled). */
export interface PromptInput {
  prompt: string;
  params: ParamValues;
}

/**
 * A task type: what a module's default export is, and what a YAML file declares. `prompt`
 * builds what the CLI is told; it may throw to refuse a combination of parameters (the task
 * is refused at submit with its message).
 */
export interface TaskType {
  name: string;
  description?: string;
  parameters?: readonly TaskTypeParameter[];
  prompt(input: PromptInput): string;
  /** --allowedTools when the spec names none; none: the agent's defaults. */
  tools?: readonly string[];
  /** --permission-mode when the spec names none; none: the agent's default. */
  permissionMode?: string;
  /** A JSON Schema (root of type object) the agent's answer must match: TaskResult.structured. */
  resultSchema?: Readonly<Record<string, unknown>>;
}

/** A type as the registry holds it: checked, its schema compiled, where it came from. */
export interface RegisteredType {
  type: TaskType;
  /** "builtin", or the file it was loaded from. */
  source: string;
  schema: ResultSchema | undefined;
}

/** A type definition that cannot be registered; the message names its source and the problem. */
export class TaskTypeError extends Error {
  override name = "TaskTypeError";
}

/** What one attempt of a task runs: the spec as its type built it, and the schema of its answer. */
export interface PreparedSpec {
  spec: TaskSpec;
  /** JSON text of the result schema; empty when the type has none. */
  resultSchema: string;
}

/** The most parameters a spec may give, and their sizes. */
export const PARAM_LIMITS = { count: 64, valueBytes: 16 * 1024 } as const;

const NAME = /^[a-z][a-z0-9_]{0,63}$/;

/**
 * Task types by name: the built-ins and the configured ones, registered in one place
 * (taskTypeRegistry in load-task-types.ts). Checks a spec's type and parameters at submit and builds what each attempt
 * runs; knows nothing of gRPC beyond the INVALID_ARGUMENT it refuses a spec with.
 */
export class TaskTypeRegistry {
  private readonly types = new Map<string, RegisteredType>();

  /** Adds a type; throws TaskTypeError naming `source` and what is wrong with it. */
  register(type: TaskType, source: string): void {
    const at = (what: string) =>
      new TaskTypeError(
        `task type ${typeof type?.name === "string" ? `${JSON.stringify(type.name)} ` : ""}from ${source}: ${what}`,
      );
    if (typeof type !== "object" || type === null) throw at("is not an object");
    if (typeof type.name !== "string" || !NAME.test(type.name))
      throw at("name must be 1–64 lowercase letters, digits and _, starting with a letter");
    const known = this.types.get(type.name);
    if (known) throw at(`the name is taken by the type from ${known.source}`);
    if (typeof type.prompt !== "function")
      throw at("prompt must be a function of {prompt, params}");
    if (type.description !== undefined && typeof type.description !== "string")
      throw at("description must be a string");
    checkParameters(type.parameters ?? [], at);
    if (type.tools !== undefined) {
      if (!Array.isArray(type.tools) || type.tools.length > SPEC_LIMITS.allowedTools)
        throw at(`tools must be a list of at most ${SPEC_LIMITS.allowedTools} tool names`);
      for (const t of type.tools as unknown[])
        if (typeof t !== "string" || !t.trim() || CONTROL.test(t))
          throw at(`tools: ${JSON.stringify(t)} is not a tool name`);
    }
    if (
      type.permissionMode !== undefined &&
      !(PERMISSION_MODES as readonly string[]).includes(type.permissionMode)
    )
      throw at(
        `permission mode ${JSON.stringify(type.permissionMode)} is unknown; use one of ${PERMISSION_MODES.join(", ")}`,
      );
    let schema: ResultSchema | undefined;
    if (type.resultSchema !== undefined) {
      try {
        schema = compileResultSchema(type.resultSchema);
      } catch (e) {
        throw at((e as Error).message);
      }
    }
    this.types.set(type.name, { type, source, schema });
  }

  get(name: string): RegisteredType | undefined {
    return this.types.get(name || "generic");
  }

  /** Every type, by name. */
  list(): RegisteredType[] {
    return [...this.types.values()].sort((a, b) => a.type.name.localeCompare(b.type.name));
  }

  /**
   * Checks a spec's type and parameters at submit, and that the prompt its type builds fits
   * `maxPromptBytes`: INVALID_ARGUMENT naming the type or the parameter.
   */
  check(spec: TaskSpec, maxPromptBytes: number): void {
    const built = this.prepare(spec).spec.prompt;
    const bytes = Buffer.byteLength(built, "utf8");
    const max = Math.min(maxPromptBytes, SPEC_LIMITS.promptBytes);
    if (bytes > max)
      throw invalid(
        `the prompt type ${quote(spec.type || "generic")} builds from spec.prompt and spec.params is ${bytes} bytes, over the limit of ${max}; put large inputs in the workspace instead`,
      );
    if (built.includes("\0"))
      throw invalid(`the prompt type ${quote(spec.type)} builds holds a NUL character`);
  }

  /**
   * What an attempt runs: the prompt built, the type's tools and permission mode as defaults;
   * INVALID_ARGUMENT as check() says.
   */
  prepare(spec: TaskSpec): PreparedSpec {
    const reg = this.get(spec.type);
    if (!reg)
      throw invalid(
        `spec.type ${quote(spec.type)} is unknown; use one of ${this.list()
          .map((r) => r.type.name)
          .join(", ")} (conductor types lists them)`,
      );
    const { type } = reg;
    const params = decodeParams(type, spec.params);
    let prompt: string;
    try {
      prompt = type.prompt({ prompt: spec.prompt, params });
    } catch (e) {
      throw invalid(
        `spec.params: type ${type.name} refused them: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
    if (typeof prompt !== "string" || !prompt.trim())
      throw invalid(`type ${type.name} built an empty prompt from spec.prompt and spec.params`);
    return {
      spec: {
        ...spec,
        prompt,
        allowedTools: spec.allowedTools.length > 0 ? spec.allowedTools : [...(type.tools ?? [])],
        permissionMode: spec.permissionMode || type.permissionMode || "",
      },
      resultSchema: reg.schema?.json ?? "",
    };
  }
}

/** A spec's params decoded by its type's declarations: INVALID_ARGUMENT naming the parameter. */
export function decodeParams(type: TaskType, given: Record<string, string>): ParamValues {
  const declared = type.parameters ?? [];
  const entries = Object.entries(given);
  if (entries.length > PARAM_LIMITS.count)
    throw invalid(
      `spec.params has ${entries.length} entries, over the limit of ${PARAM_LIMITS.count}`,
    );
  for (const [key, value] of entries) {
    const field = `spec.params[${quote(key)}]`;
    if (!declared.some((p) => p.name === key)) {
      const takes =
        declared.length > 0
          ? `it takes ${declared.map((p) => p.name).join(", ")}`
          : "it takes none";
      throw invalid(`${field} is not a parameter of type ${type.name}; ${takes}`);
    }
    if (Buffer.byteLength(value, "utf8") > PARAM_LIMITS.valueBytes)
      throw invalid(
        `${field} is over the limit of ${PARAM_LIMITS.valueBytes} bytes: ${quote(value)}`,
      );
    if (value.includes("\0")) throw invalid(`${field} contains a NUL character; remove it`);
  }
  const out: Record<string, ParamValue> = {};
  for (const p of declared) {
    const raw = given[p.name] ?? p.default;
    if (raw === undefined) {
      if (p.required)
        throw invalid(
          `spec.params[${quote(p.name)}] is required by type ${type.name}${p.description ? `: ${p.description}` : ""}`,
        );
      continue;
    }
    const decoded = decodeValue(p, raw);
    if ("why" in decoded)
      throw invalid(
        `spec.params[${quote(p.name)}] of type ${type.name} ${decoded.why}, got ${quote(raw)}`,
      );
    out[p.name] = decoded.value;
  }
  return out;
}

/** A value decoded by its parameter's kind, or why it is not one. */
type Decoded = { value: ParamValue } | { why: string };

function decodeValue(p: TaskTypeParameter, raw: string): Decoded {
  switch (p.kind) {
    case "string":
      return p.required && !raw.trim() ? { why: "must not be empty" } : { value: raw };
    case "integer": {
      const n = Number(raw.trim());
      return /^-?\d+$/.test(raw.trim()) && Number.isSafeInteger(n)
        ? { value: n }
        : { why: "must be an integer (decimal digits)" };
    }
    case "boolean":
      return raw === "true" || raw === "false"
        ? { value: raw === "true" }
        : { why: 'must be "true" or "false"' };
    case "enum":
      return (p.values ?? []).includes(raw)
        ? { value: raw }
        : { why: `must be one of ${(p.values ?? []).join(", ")}` };
    case "list": {
      if (!raw.trim()) return p.required ? { why: "must name at least one item" } : { value: [] };
      const items = raw.split(",").map((s) => s.trim());
      return items.some((s) => s === "")
        ? { why: "is a list separated by commas, and has an empty item" }
        : { value: items };
    }
  }
}

function checkParameters(params: readonly TaskTypeParameter[], at: (what: string) => Error) {
  if (!Array.isArray(params)) throw at("parameters must be a list");
  const seen = new Set<string>();
  for (const p of params as unknown[]) {
    if (typeof p !== "object" || p === null) throw at("each parameter must be an object");
    const { name, kind, required, values, description } = p as TaskTypeParameter;
    if (typeof name !== "string" || !NAME.test(name))
      throw at(
        `parameter ${JSON.stringify(name)}: a name is 1–64 lowercase letters, digits and _, starting with a letter`,
      );
    const here = (what: string) => at(`parameter ${name}: ${what}`);
    if (seen.has(name)) throw here("declared twice");
    seen.add(name);
    if (!(PARAMETER_KINDS as readonly string[]).includes(kind))
      throw here(
        `kind ${JSON.stringify(kind)} is unknown; use one of ${PARAMETER_KINDS.join(", ")}`,
      );
    if (description !== undefined && typeof description !== "string")
      throw here("description must be a string");
    if (required !== undefined && typeof required !== "boolean")
      throw here("required must be true or false");
    if (kind === "enum") {
      if (
        !Array.isArray(values) ||
        values.length === 0 ||
        values.some((v) => typeof v !== "string")
      )
        throw here("an enum needs values: a list of strings");
    } else if (values !== undefined) throw here(`values are for enums, not ${kind}`);
    const def = (p as TaskTypeParameter).default;
    if (def !== undefined) {
      if (typeof def !== "string")
        throw here(`the default must be given as a string, as a task gives it (e.g. "42", "true")`);
      if (required) throw here("a required parameter has no default");
      const decoded = decodeValue(p as TaskTypeParameter, def);
      if ("why" in decoded) throw here(`the default ${JSON.stringify(def)} ${decoded.why}`);
    }
  }
}
