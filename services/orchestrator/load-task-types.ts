import { readFile, stat } from "node:fs/promises";

/** Most bytes of a YAML type file: a schema is at most 64 KiB, a prompt at most 128 KiB. */
const MAX_TYPE_FILE_BYTES = 1024 * 1024;
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parse as parseYaml } from "yaml";
import { BUILTIN_TASK_TYPES } from "./builtin-types.ts";
import {
  TaskTypeError,
  TaskTypeRegistry,
  type ParamValue,
  type PromptInput,
  type TaskType,
  type TaskTypeParameter,
} from "./task-types.ts";

/** A type loaded from a file, with the file it came from. */
export interface LoadedType {
  type: TaskType;
  source: string;
}

/**
 * The one place task types are registered: the built-ins first, then `custom` in order. A
 * custom type may not take a built-in's name (TaskTypeError naming its file).
 */
export function taskTypeRegistry(custom: readonly LoadedType[] = []): TaskTypeRegistry {
  const registry = new TaskTypeRegistry();
  for (const type of BUILTIN_TASK_TYPES) registry.register(type, "builtin");
  for (const { type, source } of custom) registry.register(type, source);
  return registry;
}

/**
 * The registry of the built-ins and the types in `files` (orchestrator.task_types): a
 * `.yaml`/`.yml` file declares one, a `.js`/`.mjs`/`.ts` module's default export is one.
 * Throws TaskTypeError naming the file and what is wrong.
 */
export async function loadTaskTypes(files: readonly string[]): Promise<TaskTypeRegistry> {
  const loaded: LoadedType[] = [];
  for (const file of files) loaded.push({ type: await loadTypeFile(file), source: file });
  return taskTypeRegistry(loaded);
}

/** One type from a file, by its extension. */
export async function loadTypeFile(file: string): Promise<TaskType> {
  const fail = (what: string, cause?: unknown) =>
    new TaskTypeError(`task type file ${file}: ${what}`, { cause });
  const ext = path.extname(file).toLowerCase();
  if (ext === ".yaml" || ext === ".yml") {
    let text: string;
    try {
      const bytes = (await stat(file)).size;
      if (bytes > MAX_TYPE_FILE_BYTES)
        throw new Error(`it is ${bytes} bytes, over the limit of ${MAX_TYPE_FILE_BYTES}`);
      text = await readFile(file, "utf8");
    } catch (e) {
      throw fail(`cannot be read: ${(e as Error).message}`, e);
    }
    let doc: unknown;
    try {
      doc = parseYaml(text);
    } catch (e) {
      throw fail(`is not valid YAML: ${(e as Error).message}`, e);
    }
    try {
      return declarativeType(doc);
    } catch (e) {
      throw fail((e as Error).message, e);
    }
  }
  if (ext === ".js" || ext === ".mjs" || ext === ".ts") {
    let mod: { default?: unknown };
    try {
      mod = (await import(pathToFileURL(path.resolve(file)).href)) as { default?: unknown };
    } catch (e) {
      throw fail(`cannot be imported: ${(e as Error).message}`, e);
    }
    if (typeof mod.default !== "object" || mod.default === null)
      throw fail(
        "has no default export: export the task type as `export default { name, prompt, … }`",
      );
    return mod.default as TaskType;
  }
  throw fail("is neither YAML (.yaml, .yml) nor a module (.js, .mjs, .ts)");
}

const YAML_KEYS = new Set([
  "name",
  "description",
  "parameters",
  "prompt",
  "tools",
  "permission_mode",
  "result_schema",
]);

/** A type declared in YAML: its prompt a template of {{prompt}} and {{params.NAME}}. */
export function declarativeType(doc: unknown): TaskType {
  if (typeof doc !== "object" || doc === null || Array.isArray(doc))
    throw new Error(
      "must be a mapping of name, description, parameters, prompt, tools, permission_mode, result_schema",
    );
  const d = doc as Record<string, unknown>;
  for (const key of Object.keys(d))
    if (!YAML_KEYS.has(key))
      throw new Error(
        `unknown key ${JSON.stringify(key)}; a type has ${[...YAML_KEYS].join(", ")}`,
      );
  if (typeof d["prompt"] !== "string" || !d["prompt"].trim())
    throw new Error('prompt must be a template, e.g. "Audit this: {{prompt}}"');
  const parameters = Array.isArray(d["parameters"])
    ? d["parameters"].map(scalarsAsStrings)
    : d["parameters"];
  const template = d["prompt"];
  const declared = new Set(
    Array.isArray(parameters) ? parameters.map((p) => (p as { name?: unknown }).name) : [],
  );
  checkTemplate(template, declared);
  const type: Record<string, unknown> = {
    name: d["name"],
    prompt: (input: PromptInput) => renderTemplate(template, input),
  };
  if (d["description"] !== undefined) type["description"] = d["description"];
  if (parameters !== undefined) type["parameters"] = parameters;
  if (d["tools"] !== undefined) type["tools"] = d["tools"];
  if (d["permission_mode"] !== undefined) type["permissionMode"] = d["permission_mode"];
  if (d["result_schema"] !== undefined) type["resultSchema"] = d["result_schema"];
  return type as unknown as TaskType;
}

/** YAML reads `default: 42` and `values: [1, 2]` as numbers; a task gives them as strings. */
function scalarsAsStrings(p: unknown): TaskTypeParameter {
  if (typeof p !== "object" || p === null) return p as TaskTypeParameter;
  const q = { ...(p as Record<string, unknown>) };
  const str = (v: unknown) => (typeof v === "number" || typeof v === "boolean" ? String(v) : v);
  if (q["default"] !== undefined) q["default"] = str(q["default"]);
  if (Array.isArray(q["values"])) q["values"] = q["values"].map(str);
  return q as unknown as TaskTypeParameter;
}

/** `{{prompt}}`, `{{params.NAME}}`, and sections `{{#params.NAME}}…{{/params.NAME}}`. */
const TOKEN = /\{\{\s*([#/]?)([a-z][a-z0-9_.]*)\s*\}\}/g;

function checkTemplate(template: string, declared: Set<unknown>) {
  const open: string[] = [];
  for (const [, mark, name] of template.matchAll(TOKEN)) {
    const param = name!.startsWith("params.") ? name!.slice("params.".length) : undefined;
    if (name !== "prompt" && (param === undefined || !declared.has(param)))
      throw new Error(
        `prompt: {{${mark}${name}}} names no declared parameter; use {{prompt}} or {{params.NAME}} of a parameter declared under parameters`,
      );
    if (mark && param === undefined) throw new Error("prompt: a section must name a parameter");
    if (mark === "#") open.push(name!);
    if (mark === "/" && open.pop() !== name)
      throw new Error(`prompt: {{/${name}}} closes no {{#${name}}} section`);
  }
  if (open.length > 0) throw new Error(`prompt: {{#${open.at(-1)}}} is never closed`);
}

/**
 * Fills a template in one pass (what a prompt or a parameter holds is never read as a
 * placeholder): a section is kept when its parameter was given and is not false or empty; a
 * list reads as its items separated by ", ".
 */
export function renderTemplate(template: string, { prompt, params }: PromptInput): string {
  let out = "";
  let last = 0;
  /** Sections entered that are being left out, by depth. */
  const skipping: boolean[] = [];
  for (const m of template.matchAll(TOKEN)) {
    const [whole, mark, name] = m;
    const hidden = skipping.includes(true);
    if (!hidden) out += template.slice(last, m.index);
    last = m.index + whole.length;
    const value = name === "prompt" ? prompt : params[name!.slice("params.".length)];
    if (mark === "#") skipping.push(!present(value));
    else if (mark === "/") skipping.pop();
    else if (!hidden) out += show(value);
  }
  if (!skipping.includes(true)) out += template.slice(last);
  return out.trim();
}

function present(v: ParamValue | undefined): boolean {
  if (v === undefined || v === false || v === "") return false;
  return !(Array.isArray(v) && v.length === 0);
}

function show(v: ParamValue | undefined): string {
  if (v === undefined) return "";
  return Array.isArray(v) ? v.join(", ") : String(v);
}
