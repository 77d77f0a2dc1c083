import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";

/** Which Orchestrator socket a client command talks to, and how it was chosen. */
export interface Located {
  socket: string;
  /** In words, for the message when nothing answers there. */
  how: string;
}

/**
 * Finds the Conductor a client command talks to: --socket or the configuration when they name
 * one, else CONDUCTOR_SOCKET, else the `.conductor/` folder of the working folder or the nearest
 * folder above it that has one (as git finds `.git/`), so commands work from anywhere in a project.
 */
export function locateOrchestrator(opts: {
  /** communication.socket_path as configured (absolute). */
  configured: string;
  /** Whether a flag, the file or the environment set the socket or its folder. */
  explicit: boolean;
  env: Record<string, string | undefined>;
  cwd: string;
}): Located {
  if (opts.explicit) return { socket: opts.configured, how: "configured" };
  const fromEnv = opts.env["CONDUCTOR_SOCKET"];
  if (fromEnv) return { socket: path.resolve(opts.cwd, fromEnv), how: "CONDUCTOR_SOCKET" };
  for (let dir = opts.cwd; ; dir = path.dirname(dir)) {
    const folder = path.join(dir, ".conductor");
    if (isDir(folder))
      return {
        socket: path.join(folder, "run", "orchestrator.sock"),
        how: `the nearest .conductor/ folder (${folder})`,
      };
    if (path.dirname(dir) === dir) break;
  }
  return {
    socket: opts.configured,
    how: `no .conductor/ folder in ${opts.cwd} or any folder above it, and CONDUCTOR_SOCKET is not set`,
  };
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/**
 * The command that runs this `conductor` again from any folder, for advice printed to a person:
 * the script this process runs, by its absolute path (single-quoted when a shell would split
 * it). "npx conductor" works only inside Conductor's own checkout; elsewhere npm finds an
 * unrelated package of that name.
 */
export function conductorCommand(script = process.argv[1] ?? "conductor"): string {
  return /^[\w@%+=:,./-]+$/.test(script) ? script : `'${script.replaceAll("'", `'\\''`)}'`;
}

/** Nothing serves at the socket a client command chose: says so and how to start one. */
export class NotRunningError extends Error {
  override name = "NotRunningError";
  constructor(located: Located, cause?: unknown) {
    const why = existsSync(located.socket) ? "nothing answers on" : "there is no socket at";
    super(
      `no Conductor is running: ${why} ${located.socket} (${located.how}).\n` +
        `Start one in your project folder with "${conductorCommand()} up" (it serves .conductor/run/orchestrator.sock),\n` +
        `or name a running one with --socket PATH or CONDUCTOR_SOCKET=PATH.`,
      { cause },
    );
  }
}

/** Whether a client call failed because nothing listens on the socket. */
export function isNotListening(e: unknown): boolean {
  if (!(e instanceof ConnectError)) return false;
  if (e.code !== Code.Unavailable && e.code !== Code.Internal && e.code !== Code.Unknown)
    return false;
  const cause = e.cause as { code?: string } | undefined;
  const code = cause?.code ?? /\b(ENOENT|ECONNREFUSED|ENOTSOCK)\b/.exec(e.rawMessage)?.[1];
  return code === "ENOENT" || code === "ECONNREFUSED" || code === "ENOTSOCK";
}
