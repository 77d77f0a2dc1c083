import { parseArgs } from "node:util";

/** One flag of a command, as parseArgs takes it plus what its help says. */
export interface Flag {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
  /** The value's placeholder in help, e.g. "N" or "FILE". */
  arg?: string;
  help: string;
}

/** A `conductor` command: its name, what it does, and the flags it takes. */
export interface Command {
  name: string;
  /** Positional arguments as help shows them, e.g. "<task-id>". */
  args: string;
  summary: string;
  /** More help, shown by `conductor help <command>`. */
  details?: string;
  flags: Record<string, Flag>;
}

/** What a command line parsed into. */
export interface ParsedCommand {
  command: Command;
  positionals: string[];
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
}

/** Usage errors: the command line itself is wrong (exit code 2). */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * Parses `argv` (the words after `conductor`): the first word that is not a flag or a flag's
 * value is the command; flags may come before or after it.
 */
export function parseCommandLine(
  argv: string[],
  commands: readonly Command[],
): ParsedCommand | undefined {
  const all = new Map(commands.flatMap((c) => Object.entries(c.flags)));
  let at = -1;
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === "--") break;
    if (!word.startsWith("-") || word === "-") {
      at = i;
      break;
    }
    const flag = all.get(word.replace(/^--?/, ""));
    if (flag?.type === "string" && !word.includes("=")) i++; // its value
  }
  if (at < 0) return undefined;
  const name = argv[at]!;
  const command = commands.find((c) => c.name === name);
  if (!command) throw new UsageError(`unknown command "${name}"; run "conductor help"`);
  const args = negativeValues([...argv.slice(0, at), ...argv.slice(at + 1)], command.flags);
  try {
    const { values, positionals } = parseArgs({
      args,
      options: command.flags,
      allowPositionals: true,
      strict: true,
    });
    return { command, positionals, values };
  } catch (e) {
    const end = args.indexOf("--");
    const prompt = (end < 0 ? args : args.slice(0, end)).find(
      (w) => /^-[^-]/.test(w) && /\s/.test(w),
    );
    if ((e as NodeJS.ErrnoException).code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && prompt) {
      throw new UsageError(
        `${shellQuote(prompt)} starts with "-", so it reads as flags; put it after "--", as in: conductor ${name} -- ${shellQuote(prompt)}`,
      );
    }
    throw new UsageError(
      `${(e as Error).message.replace(/\.$/, "")}. Run "conductor help ${name}" for its flags.`,
    );
  }
}

/**
 * Joins a string flag and a negative number after it (`--metrics-port -1`) into one word
 * (`--metrics-port=-1`): parseArgs would take "-1" for a flag and call the value ambiguous.
 */
function negativeValues(args: string[], flags: Record<string, Flag>): string[] {
  const byShort = new Map(Object.entries(flags).map(([n, f]) => [f.short && `-${f.short}`, n]));
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const word = args[i]!;
    const next = args[i + 1];
    if (word === "--") return [...joined, ...args.slice(i)];
    const name = word.startsWith("--") ? word.slice(2) : byShort.get(word);
    if (name && flags[name]?.type === "string" && next && /^-\d+(\.\d+)?$/.test(next)) {
      joined.push(`--${name}=${next}`);
      i++;
    } else joined.push(word);
  }
  return joined;
}

/** A word as a shell takes it back: bare when safe, else in double or single quotes. */
export function shellQuote(word: string): string {
  if (/^[\w./:=@%+,-]+$/.test(word)) return word;
  if (!/["$`\\!]/.test(word)) return `"${word}"`;
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** The help of one command. */
export function commandHelp(c: Command): string {
  const rows = Object.entries(c.flags)
    .filter(([name]) => name !== "help")
    .map(([name, f]) => {
      const short = f.short ? `-${f.short}, ` : "    ";
      const value = f.type === "string" ? ` ${f.arg ?? "VALUE"}` : "";
      return [`  ${short}--${name}${value}`, f.help + (f.multiple ? " (may be repeated)" : "")];
    });
  const width = Math.max(...rows.map(([l]) => l!.length)) + 2;
  const flags = rows.map(([l, h]) => `${l!.padEnd(width)}${h}`).join("\n");
  return (
    `conductor ${c.name}${c.args ? ` ${c.args}` : ""} — ${c.summary}\n` +
    (c.details ? `\n${c.details.trim()}\n` : "") +
    `\nFlags:\n${flags}\n`
  );
}

/** The overview `conductor help` prints. */
export function overview(commands: readonly Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length)) + 2;
  const line = (c: Command) => `  ${c.name.padEnd(width)}${c.summary}`;
  const services = new Set(["up", "orchestrator", "agent-host", "broker", "config"]);
  const setup = new Set(["certs"]);
  return `conductor — run many Claude Code agents in parallel behind a durable gRPC task queue

Start Conductor (in your project folder; sockets in .conductor/run, data in .conductor/data):
${commands
  .filter((c) => services.has(c.name))
  .map(line)
  .join("\n")}

Work with a running Conductor (found in .conductor/ here or in a folder above, or at
$CONDUCTOR_SOCKET, or --socket PATH):
${commands
  .filter((c) => !services.has(c.name) && !setup.has(c.name) && c.name !== "help")
  .map(line)
  .join("\n")}

Set up mutual TLS (a CA, and a certificate for each service and client):
${commands
  .filter((c) => setup.has(c.name))
  .map(line)
  .join("\n")}

"conductor help <command>" or "conductor <command> --help" shows a command's flags.
Every command takes --json for output a program reads.
`;
}

/** A flag's string value, if given. */
export function str(p: ParsedCommand, name: string): string | undefined {
  const v = p.values[name];
  return typeof v === "string" ? v : undefined;
}

/** A repeatable flag's values (none: empty). */
export function list(p: ParsedCommand, name: string): string[] {
  const v = p.values[name];
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === "string");
  return typeof v === "string" ? [v] : [];
}

/** Whether a boolean flag was given. */
export function bool(p: ParsedCommand, name: string): boolean {
  return p.values[name] === true;
}
