import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import path from "node:path";
import type { Config } from "../shared/config.ts";
import { DEFAULT_SOCKET_DIR, setsConfigKeys } from "../shared/config-env.ts";
import {
  commandHelp,
  overview,
  parseCommandLine,
  str,
  UsageError,
  type ParsedCommand,
} from "./args.ts";
import { CLIENT_COMMANDS, COMMANDS, metricsPortKey, SERVICE_COMMANDS } from "./commands.ts";
import { isReaderGone, READER_GONE } from "./stdout.ts";

// Everything else is imported where a command needs it: `--help` loads no gRPC, a client command
// neither the services (OpenTelemetry, dockerode) nor, unless keys are set, the configuration's
// schema (zod) and YAML parser. A client command starts in about a third of the time.

/**
 * Entry point of the `conductor` command; returns the exit code. `o.serviceHeap`: a service
 * command first starts again in this process with the services' heap settings (service-heap.ts).
 */
export async function main(
  argv: string[],
  env: Record<string, string | undefined>,
  o: { serviceHeap?: boolean } = {},
): Promise<number> {
  const out = (s: string) => void process.stdout.write(s);
  const err = (s: string) => void process.stderr.write(s);
  let parsed: ParsedCommand | undefined;
  try {
    parsed = parseCommandLine(argv, COMMANDS);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    err(`conductor: ${e.message}\n`);
    return 2;
  }
  if (!parsed) {
    const asked = argv.includes("--help") || argv.includes("-h");
    (asked ? out : err)(overview(COMMANDS));
    return asked ? 0 : 2;
  }
  const { command } = parsed;
  if (parsed.values["help"] === true) {
    out(commandHelp(command));
    return 0;
  }
  if (command.name === "help") return help(parsed.positionals[0], out, err);
  if (command.name === "certs") {
    // No configuration: certificates are made before any service is set up.
    const certs = parsed;
    const { runCertsCommand } = await import("./certs-command.ts");
    return failureCode(command.name, err, () => runCertsCommand(certs, (l) => out(l + "\n")));
  }
  if (command.name === "config" && parsed.positionals[0] !== "print") {
    err(`conductor config: expected "conductor config print"\n`);
    return 2;
  }
  const quick = CLIENT_COMMANDS.has(command.name) ? quickSocket(parsed, env) : undefined;
  if (quick !== undefined) return failureCode(command.name, err, () => client(parsed, quick, env));
  if (o.serviceHeap && SERVICE_COMMANDS.has(command.name))
    (await import("./service-heap.ts")).restartWithServiceHeap(env);
  const config = await configOf(parsed, env, err);
  if (!config) return 2;
  return failureCode(command.name, err, async () => {
    if (command.name === "config") {
      out(JSON.stringify(redact(config), null, 2) + "\n");
      return 0;
    }
    if (SERVICE_COMMANDS.has(command.name)) {
      const { serve } = await import("./serve.ts");
      return await serve(command.name, config, {
        env,
        stdout: process.stdout,
        stderr: process.stderr,
        json: parsed.values["json"] === true,
      });
    }
    if (CLIENT_COMMANDS.has(command.name))
      return await client(parsed, config.communication.socket_path, env);
    err(`conductor: "${command.name}" does nothing yet\n`);
    return 2;
  });
}

/** The configuration of a command, or undefined once its problems are on stderr. */
async function configOf(
  parsed: ParsedCommand,
  env: Record<string, string | undefined>,
  err: (s: string) => void,
): Promise<Config | undefined> {
  const { ConfigError, loadConfig } = await import("../shared/config.ts");
  try {
    return loadConfig({
      file: str(parsed, "config"),
      env,
      flags: flagsOf(parsed),
      flagNames: FLAG_NAMES(parsed.command.name),
    });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    err(`conductor: ${e.message}\n`);
    return undefined;
  }
}

/**
 * communication.socket_path as loadConfig gives it when only --socket, --socket-dir and
 * --data-dir can set keys (no --config file, no CONDUCTOR_* key variable, no empty flag), worked
 * out without loading the configuration's schema; undefined when loadConfig must decide.
 */
export function quickSocket(
  parsed: ParsedCommand,
  env: Record<string, string | undefined>,
): string | undefined {
  const simple = ["communication.socket_path", "communication.socket_dir", "storage.data_dir"];
  const others = Object.entries(flagsOf(parsed)).filter(([key]) => !simple.includes(key));
  if (str(parsed, "config") !== undefined || setsConfigKeys(env)) return undefined;
  if (others.some(([, value]) => value !== undefined)) return undefined;
  const [socket, dir] = [str(parsed, "socket"), str(parsed, "socket-dir")];
  if (dir === "" || str(parsed, "data-dir") === "") return undefined;
  const cwd = process.cwd();
  if (socket) return path.resolve(cwd, socket);
  return path.join(path.resolve(cwd, dir ?? DEFAULT_SOCKET_DIR), "orchestrator.sock");
}

/**
 * Runs a command and turns how it failed into the exit code: 2 for a usage error, 141 when the
 * reader went away, 1 for anything else, each but the second with a message on stderr.
 */
export async function failureCode(
  name: string,
  err: (s: string) => void,
  run: () => Promise<number>,
): Promise<number> {
  try {
    return await run();
  } catch (e) {
    // The reader went away (`conductor output ID | head -c 10`): stop quietly, as Unix commands do.
    if (isReaderGone(e)) return READER_GONE;
    if (e instanceof UsageError) {
      err(`conductor ${name}: ${e.message}\n`);
      return 2;
    }
    // Loaded by then whenever an RPC failed; a certs command's failure pays for it.
    const { Code, ConnectError } = await import("@connectrpc/connect");
    let message = e instanceof ConnectError ? e.rawMessage : (e as Error).message;
    const code = e instanceof ConnectError ? ` [${Code[e.code]}]` : "";
    // The CLI cancels no call of its own: a cancelled one was ended by the Orchestrator, which
    // cancels its calls as it stops.
    if (e instanceof ConnectError && e.code === Code.Canceled)
      message = `the Orchestrator ended the call (${message}): it stopped or restarted; run the command again once it is back`;
    err(`conductor ${name}: ${message}${code}\n`);
    return 1;
  }
}

function help(name: string | undefined, out: (s: string) => void, err: (s: string) => void) {
  if (!name) {
    out(overview(COMMANDS));
    return 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    err(`conductor help: unknown command "${name}"\n\n${overview(COMMANDS)}`);
    return 2;
  }
  out(commandHelp(command));
  return 0;
}

/**
 * Finds the Orchestrator (see locate.ts; `configured` is communication.socket_path) and runs a
 * client command against it.
 */
async function client(
  parsed: ParsedCommand,
  configured: string,
  env: Record<string, string | undefined>,
): Promise<number> {
  const [{ runClientCommand }, { printable }, locate] = await Promise.all([
    import("./client-commands.ts"),
    import("./format.ts"),
    import("./locate.ts"),
  ]);
  const cwd = process.cwd();
  const located = locate.locateOrchestrator({
    configured,
    explicit: configured !== path.resolve(cwd, DEFAULT_SOCKET_DIR, "orchestrator.sock"),
    env,
    cwd,
  });
  const io = {
    // Nothing the agent wrote reaches the terminal as a control sequence.
    out: (line: string) => void process.stdout.write(printable(line) + "\n"),
    write: (text: string | Uint8Array) =>
      new Promise<void>((resolve, reject) =>
        process.stdout.write(text, (e) => (e ? reject(e) : resolve())),
      ),
    readStdin: () => readFileSync(0, "utf8"),
    cwd,
    home: homedir(),
  };
  try {
    return await runClientCommand(parsed, located.socket, io);
  } catch (e) {
    if (locate.isNotListening(e)) throw new locate.NotRunningError(located, e);
    throw e;
  }
}

/** Flags that set configuration keys, by key. */
const FLAG_NAMES = (command: string): Record<string, string> => ({
  "orchestrator.num_agents": "--agents",
  "communication.socket_dir": "--socket-dir",
  "communication.socket_path": "--socket",
  "storage.data_dir": "--data-dir",
  "observability.log_level": "--log-level",
  "observability.log_format": "--log-format",
  "runtime.backend": "--runtime",
  "communication.listen": "--listen",
  "agent_host.join": "--join",
  "observability.console": "--console",
  [metricsPortKey(command)]: "--metrics-port",
});

function flagsOf(p: ParsedCommand): Record<string, unknown> {
  const num = (s: string | undefined) =>
    s === undefined ? undefined : s.trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : s;
  const names = FLAG_NAMES(p.command.name);
  const flags: Record<string, unknown> = {};
  for (const [key, flag] of Object.entries(names)) {
    const value = str(p, flag.slice(2));
    flags[key] =
      key === "orchestrator.num_agents" || key.endsWith("metrics_port") ? num(value) : value;
  }
  return flags;
}

function redact(config: Config): Config {
  const copy = structuredClone(config);
  if (copy.agent.anthropic_api_key) copy.agent.anthropic_api_key = "(set)";
  return copy;
}
