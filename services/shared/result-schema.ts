import { z } from "zod";

/** Most bytes of a result schema as JSON text: it is one argument of the CLI (--json-schema). */
export const MAX_RESULT_SCHEMA_BYTES = 64 * 1024;

/**
 * Deepest nesting an answer may have: what reaches the Orchestrator as a
 * google.protobuf.Struct must decode within protobuf-es's recursion limit of 100 (each JSON
 * level is two or three messages), with room for the messages around it.
 */
export const MAX_ANSWER_DEPTH = 24;

/** How deep a JSON value nests (a scalar is 0); stops counting past `most`. */
function depth(v: unknown, most: number): number {
  if (typeof v !== "object" || v === null || most < 0) return 0;
  let d = 0;
  for (const x of Object.values(v)) d = Math.max(d, depth(x, most - 1));
  return d + 1;
}

/**
 * Why an answer is nested too deeply for Conductor to deliver (over MAX_ANSWER_DEPTH levels),
 * or undefined. Looks no deeper than that, so any answer JSON.parse gave can be checked.
 */
export function tooDeep(answer: unknown): string | undefined {
  return depth(answer, MAX_ANSWER_DEPTH + 1) > MAX_ANSWER_DEPTH
    ? `(the answer): nested deeper than ${MAX_ANSWER_DEPTH} levels, the most Conductor delivers`
    : undefined;
}

/** A JSON Schema a task's answer must match, compiled once (zod reads JSON Schema itself). */
export interface ResultSchema {
  /** The schema as JSON text, as RunTaskRequest.result_schema and ListTaskTypes carry it. */
  readonly json: string;
  /** Why `answer` does not match, in a line a person can act on; undefined when it does. */
  mismatch(answer: unknown): string | undefined;
}

/**
 * Compiles a JSON Schema given as an object or as JSON text. Throws an Error saying what is
 * wrong: not JSON, not an object-rooted schema (the CLI hands it to the model as a tool's
 * input schema, which must be an object), too large, or a schema zod cannot read.
 */
export function compileResultSchema(schema: unknown): ResultSchema {
  const value: unknown = typeof schema === "string" ? parseJson(schema) : schema;
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new Error("a result schema must be a JSON Schema object");
  if ((value as Record<string, unknown>)["type"] !== "object")
    throw new Error(`a result schema's root must have "type": "object" (the CLI requires it)`);
  const json = JSON.stringify(value);
  const bytes = Buffer.byteLength(json, "utf8");
  if (bytes > MAX_RESULT_SCHEMA_BYTES)
    throw new Error(
      `a result schema is ${bytes} bytes as JSON, over the limit of ${MAX_RESULT_SCHEMA_BYTES}`,
    );
  let compiled: z.ZodType;
  try {
    compiled = z.fromJSONSchema(value as Parameters<typeof z.fromJSONSchema>[0]);
  } catch (cause) {
    throw new Error(`the result schema is not a JSON Schema Conductor can check: ${msg(cause)}`, {
      cause,
    });
  }
  return {
    json,
    mismatch(answer) {
      const deep = tooDeep(answer);
      if (deep) return deep;
      const r = compiled.safeParse(answer);
      if (r.success) return undefined;
      return r.error.issues
        .slice(0, 5)
        .map((i) => `${i.path.length > 0 ? i.path.join(".") : "(the answer)"}: ${i.message}`)
        .join("; ");
    },
  };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (cause) {
    throw new Error(`a result schema is not JSON: ${msg(cause)}`, { cause });
  }
}

function msg(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
