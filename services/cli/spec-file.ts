import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import type { parse as ParseYaml } from "yaml";
import { TaskSpecSchema, type TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { UsageError } from "./args.ts";
import { localPath, repositoryOf } from "./workspace-flags.ts";

/** Whether `submit -f FILE` reads a whole task spec (YAML or JSON) rather than a prompt. */
export function isSpecFile(file: string): boolean {
  return /\.(ya?ml|json)$/i.test(file);
}

/**
 * Reads a task spec from a YAML (or JSON) file: the TaskSpec's fields by their proto names
 * (`max_attempts`) or JSON names (`maxAttempts`), e.g.
 *
 *     prompt: Add input validation to the signup form
 *     workspace: { git: { repository: ., branch: signup-validation } }
 *     checks: ["npm test", { command: npm run e2e, timeout_seconds: 900 }]
 *
 * A check may be a plain command. Local paths of the workspace are relative to the file's
 * folder (`~` is `home`). Errors name the file and the field.
 */
export function readSpecFile(file: string, home: string): TaskSpec {
  const doc = readYamlFile(file);
  if (doc === null || typeof doc !== "object" || Array.isArray(doc))
    throw new UsageError(
      `${file} should hold a task spec: a mapping of TaskSpec fields (prompt, workspace, checks, priority, …)`,
    );
  return specOfFields(doc as Record<string, unknown>, file, "", home);
}

/** A YAML (or JSON) file's document; errors name the file. */
export function readYamlFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read the spec file ${file}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  // Loaded only here (70 modules): `conductor submit PROMPT` reads no YAML.
  const { parse } = createRequire(import.meta.url)("yaml") as { parse: typeof ParseYaml };
  try {
    return parse(text);
  } catch (e) {
    throw new UsageError(`${file} is not valid YAML: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * A TaskSpec from a mapping of its fields as a spec file gives them (`where` names it in
 * errors, after the file): checks may be plain commands, and local workspace paths are made
 * absolute from the file's folder — except those holding a `{{PARAM}}` of a group's matrix.
 */
export function specOfFields(
  doc: Record<string, unknown>,
  file: string,
  where: string,
  home: string,
): TaskSpec {
  const fields = { ...doc };
  // A check may be given as its command alone.
  if (Array.isArray(fields["checks"]))
    fields["checks"] = fields["checks"].map((c: unknown) =>
      typeof c === "string" ? { command: c } : c,
    );
  let spec: TaskSpec;
  try {
    spec = fromJson(TaskSpecSchema, fields as JsonValue);
  } catch (e) {
    const why = (e as Error).message.replaceAll("conductor.v1.", "");
    throw new UsageError(`${file}${where ? ` (${where})` : ""}: ${why}`, { cause: e });
  }
  const base = { cwd: path.dirname(path.resolve(file)), home };
  const kind = spec.workspace?.kind;
  const templated = (s: string) => s.includes("{{");
  if (kind?.case === "git" && kind.value.repository && !templated(kind.value.repository))
    kind.value.repository = repositoryOf(kind.value.repository, base);
  if (kind?.case === "hostPath" && kind.value.path && !templated(kind.value.path))
    kind.value.path = localPath(kind.value.path, base);
  return spec;
}
