import path from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../shared/config.ts";
import { parseCommandLine, type ParsedCommand } from "./args.ts";
import { COMMANDS } from "./commands.ts";
import { quickSocket } from "./main.ts";

const parse = (args: string[]): ParsedCommand => parseCommandLine(["tasks", ...args], COMMANDS)!;

/** communication.socket_path as loadConfig gives it for a client command's flags. */
function configured(args: string[], env: Record<string, string>): string {
  const p = parse(args);
  const flag = (name: string) => p.values[name] as string | undefined;
  return loadConfig({
    env,
    flags: {
      "communication.socket_path": flag("socket"),
      "communication.socket_dir": flag("socket-dir"),
      "storage.data_dir": flag("data-dir"),
    },
  }).communication.socket_path;
}

describe("a client command's socket without the configuration's schema", () => {
  const env = { CONDUCTOR_SOCKET: "/elsewhere/o.sock", ANTHROPIC_API_KEY: "k", HOME: "/h" };
  it.each([
    [[]],
    [["--socket", "run/o.sock"]],
    [["--socket", "/abs/o.sock", "--socket-dir", "d"]],
    [["--socket", ""]],
    [["--socket-dir", "sockets"]],
    [["--socket-dir", "/abs/sockets", "--data-dir", "data"]],
  ])("%j is what loadConfig gives", (args) => {
    expect(quickSocket(parse(args), env)).toBe(configured(args, env));
    expect(path.isAbsolute(quickSocket(parse(args), env)!)).toBe(true);
  });

  it.each([
    [["--config", "conductor.yaml"], {}],
    [[], { CONDUCTOR_COMMUNICATION_SOCKET_DIR: "x" }],
    [[], { CONDUCTOR_NO_SUCH_KEY: "x" }],
    [["--socket-dir", ""], {}],
    [["--data-dir", ""], {}],
  ])("%j %j leave it to loadConfig (keys to check, or errors to report)", (args, more) => {
    expect(quickSocket(parse(args), { ...env, ...more })).toBeUndefined();
  });
});
