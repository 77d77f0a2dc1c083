import { readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import {
  BudgetSchema,
  ResourcesSchema,
  TaskSpecSchema,
  type TaskSpec,
} from "../../gen/conductor/v1/task_pb.js";
import { list, shellQuote, str, UsageError, type ParsedCommand } from "./args.ts";
import { oneLine } from "./format.ts";
import { isSpecFile, readSpecFile } from "./spec-file.ts";
import { applyWorkspaceFlags, type PathBase } from "./workspace-flags.ts";

/** What building a spec reads besides the command line. */
export interface SpecSources extends PathBase {
  readStdin: () => string;
}

/**
 * The TaskSpec `conductor submit` sends: a spec file's fields (-f FILE.yaml), then each flag
 * given over them; bad values are refused with a UsageError before anything is sent.
 */
export function taskSpecOf(p: ParsedCommand, from: SpecSources): TaskSpec {
  const file = str(p, "file");
  const specFile = file !== undefined && isSpecFile(file) ? file : undefined;
  const spec = specFile ? readSpecFile(specFile, from.home) : create(TaskSpecSchema);
  spec.prompt = promptOf(p, from, specFile ? undefined : file, spec.prompt);
  const text = (flag: string) => str(p, flag);
  spec.type = text("type") ?? spec.type;
  spec.priority = int(p, "priority") ?? spec.priority;
  spec.timeoutSeconds = int(p, "timeout") ?? spec.timeoutSeconds;
  spec.maxAttempts = int(p, "max-attempts") ?? spec.maxAttempts;
  spec.model = text("model") ?? spec.model;
  spec.maxTurns = int(p, "max-turns") ?? spec.maxTurns;
  const tools = list(p, "allowed-tools").flatMap((t) =>
    t
      .split(/[\s,]+/)
      .map((s) => s.trim())
      .filter(Boolean),
  );
  if (tools.length > 0) spec.allowedTools = tools;
  spec.permissionMode = text("permission-mode") ?? spec.permissionMode;
  for (const l of list(p, "label")) {
    const eq = l.indexOf("=");
    if (eq <= 0) throw new UsageError(`--label "${oneLine(l, 40)}": expected KEY=VALUE`);
    spec.labels[l.slice(0, eq)] = l.slice(eq + 1);
  }
  for (const kv of list(p, "param")) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new UsageError(`--param "${oneLine(kv, 40)}": expected KEY=VALUE`);
    spec.params[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  for (const l of list(p, "node-selector")) {
    const eq = l.indexOf("=");
    if (eq <= 0) throw new UsageError(`--node-selector "${oneLine(l, 40)}": expected KEY=VALUE`);
    spec.nodeSelector[l.slice(0, eq)] = l.slice(eq + 1);
  }
  const budget = text("budget");
  if (budget !== undefined) {
    const usd = Number(budget.replace(/^\$/, ""));
    if (budget.trim() === "" || !Number.isFinite(usd) || usd <= 0)
      throw new UsageError(`--budget "${oneLine(budget, 40)}": expected US dollars, e.g. 0.50`);
    spec.budget ??= create(BudgetSchema);
    spec.budget.maxUsd = usd;
  }
  const deps = list(p, "depends-on");
  if (deps.length > 0) spec.dependsOn = [...spec.dependsOn, ...deps];
  const cpus = text("cpus");
  const memory = text("memory");
  if (cpus !== undefined || memory !== undefined) {
    spec.resources ??= create(ResourcesSchema);
    if (cpus !== undefined) {
      const n = Number(cpus);
      if (cpus.trim() === "" || !Number.isFinite(n) || n < 0)
        throw new UsageError(
          `--cpus "${oneLine(cpus, 40)}": expected a number of CPUs, e.g. 2 or 0.5`,
        );
      spec.resources.cpus = n;
    }
    if (memory !== undefined) spec.resources.memoryBytes = bytesOf("--memory", memory);
  }
  spec.idempotencyKey = text("idempotency-key") ?? spec.idempotencyKey;
  applyWorkspaceFlags(spec, p, from);
  return spec;
}

/** A size in bytes, or with k, m or g (powers of 1024), e.g. 512m. */
function bytesOf(flag: string, value: string): bigint {
  const m = /^(\d+)([kmg]?)$/i.exec(value.trim());
  if (!m)
    throw new UsageError(
      `${flag} "${oneLine(value, 40)}": expected bytes, or a number with k, m or g (e.g. 4g)`,
    );
  const n = BigInt(m[1]!) * 1024n ** BigInt(" kmg".indexOf((m[2] || " ").toLowerCase()));
  if (n > 2n ** 63n - 1n) throw new UsageError(`${flag} "${oneLine(value, 40)}": too large`);
  return n;
}

/**
 * The prompt: the argument ("-": stdin), or the prompt file (`promptFile`, "-": stdin), or
 * else the spec file's (`fromSpec`), which an argument overrides.
 */
function promptOf(
  p: ParsedCommand,
  from: SpecSources,
  promptFile: string | undefined,
  fromSpec: string,
): string {
  const words = p.positionals;
  if (promptFile !== undefined) {
    if (words.length > 0)
      throw new UsageError(`give the prompt as an argument or with -f FILE, not both`);
    return promptFile === "-" ? from.readStdin() : readPrompt(promptFile);
  }
  if (words.length === 1) return words[0] === "-" ? from.readStdin() : words[0]!;
  if (words.length === 0) {
    if (fromSpec) return fromSpec;
    throw new UsageError(
      str(p, "file") !== undefined
        ? `${str(p, "file")} gives no prompt: add "prompt: …" to it, or give the prompt as an argument`
        : 'usage: conductor submit "<prompt>" [flags] (or -f FILE, or - for standard input)',
    );
  }
  const flags = words.filter((w) => isFlagOf(p, w));
  const prompt = words.find((w) => !isFlagOf(p, w)) ?? "<prompt>";
  throw new UsageError(
    `expected one prompt, got ${words.length} arguments: ` +
      (flags.length > 0
        ? `${flags.map((f) => shellQuote(f)).join(", ")} came after "--", which makes every word a prompt; flags go before "--": conductor submit ${flags.map((f) => shellQuote(f)).join(" ")} -- ${shellQuote(oneLine(prompt, 60))}`
        : 'quote the prompt as one argument ("conductor submit \\"fix the tests\\"")'),
  );
}

/** Whether `word` is one of the command's flags (`--wait`, `-w`, `--priority=3`). */
function isFlagOf(p: ParsedCommand, word: string): boolean {
  const long = /^--([^=]+)/.exec(word)?.[1];
  if (long) return long in p.command.flags;
  return (
    /^-[A-Za-z]$/.test(word) && Object.values(p.command.flags).some((f) => `-${f.short}` === word)
  );
}

function readPrompt(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read the prompt file ${file}: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

/** A whole-number flag's value, undefined when not given. */
export function int(p: ParsedCommand, flag: string): number | undefined {
  const s = str(p, flag);
  if (s === undefined) return undefined;
  const n = Number(s);
  if (s.trim() === "" || !Number.isInteger(n) || Math.abs(n) > 2 ** 31 - 1)
    throw new UsageError(`--${flag} must be a whole number, got "${oneLine(s, 40)}"`);
  return n;
}
