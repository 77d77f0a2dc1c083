// The Claude Code CLI run bare, as an AgentHost would run it but with nothing around it: the
// peer of the real-CLI benchmarks.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { resolveClaudePath } from "../services/shared/claude-path.ts";

const run = promisify(execFile);

/**
 * Runs `claude -p PROMPT --output-format stream-json --verbose --permission-mode acceptEdits`
 * and `extra` in `dir` (its home and config folder too) against the Messages API at
 * `modelUrl`; resolves when it has exited (rejects if it failed).
 */
export async function runBareCli(
  prompt: string,
  dir: string,
  modelUrl: string,
  extra: string[] = [],
): Promise<void> {
  const args = ["-p", prompt, "--output-format", "stream-json", "--verbose"];
  const pending = run(
    resolveClaudePath(""),
    [...args, "--permission-mode", "acceptEdits", ...extra],
    {
      cwd: dir,
      env: {
        PATH: process.env["PATH"] ?? "/usr/bin:/bin",
        HOME: dir,
        CLAUDE_CONFIG_DIR: dir,
        ANTHROPIC_BASE_URL: modelUrl,
        ANTHROPIC_API_KEY: "sk-bench",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
        DISABLE_AUTOUPDATER: "1",
      },
    },
  );
  // With -p the CLI also reads stdin until it closes (it waits ~3 s for a pipe that stays
  // open); the AgentHost gives it none, and so does this.
  pending.child.stdin?.end();
  await pending;
}
