import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

/**
 * The Claude Code CLI to run: the configured path, else the binary the
 * @anthropic-ai/claude-code npm package installed.
 */
export function resolveClaudePath(configured: string): string {
  if (configured) {
    if (!existsSync(configured)) {
      throw new Error(
        `agent.claude_path ${configured} does not exist; point it at the claude binary`,
      );
    }
    return configured;
  }
  const require = createRequire(import.meta.url);
  let pkg: string;
  try {
    pkg = require.resolve("@anthropic-ai/claude-code/package.json");
  } catch (cause) {
    throw new Error(
      "the Claude Code CLI is not installed: run `npm ci`, or set agent.claude_path",
      { cause },
    );
  }
  const bin = path.join(path.dirname(pkg), "bin", "claude.exe");
  if (!existsSync(bin)) {
    throw new Error(
      `the Claude Code CLI's binary is missing at ${bin}: reinstall with \`npm ci\`, or set agent.claude_path`,
    );
  }
  return bin;
}
