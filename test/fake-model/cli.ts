// Runs the real Claude Code CLI (`claude -p … --output-format stream-json --verbose`)
// against a fake model, in a fresh temp cwd with its own CLAUDE_CONFIG_DIR, and collects
// its stream-json lines with arrival times. Shared by the fake's own end-to-end tests and
// by other suites that need a real agent without the real API.
import { spawn, type ChildProcessByStdio } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";

/** The CLI binary installed with the project (native, from @anthropic-ai/claude-code). */
export const CLAUDE_BIN = fileURLToPath(new URL("../../node_modules/.bin/claude", import.meta.url));

/** What to run: the fake's URL, the prompt, and extra CLI flags / env. */
export interface RunClaudeOptions {
  fakeUrl: string;
  prompt: string;
  args?: string[]; // e.g. ["--permission-mode", "acceptEdits", "--allowedTools", "Write"]
  env?: Record<string, string>; // e.g. { CLAUDE_CODE_MAX_RETRIES: "0" }
  timeoutMs?: number; // SIGKILL after this long (default 60 s)
}

/** One stream-json line as parsed, with the time (Date.now()) it arrived. */
export interface StreamLine {
  at: number;
  json: Record<string, unknown>;
}

/** A finished run; `await using` removes its temp cwd and config dir. */
export interface ClaudeRun extends AsyncDisposable {
  cwd: string; // the CLI's working directory (a fresh temp dir)
  lines: StreamLine[];
  result: Record<string, unknown> | undefined; // the last `type: "result"` line
  resultAt: number | undefined;
  startedAt: number;
  exitedAt: number;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stderr: string;
}

/** Env the CLI gets: ours minus any inherited Claude/Anthropic settings, plus the fake's. */
function cliEnv(fakeUrl: string, configDir: string, extra: Record<string, string>) {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !/^(ANTHROPIC_|CLAUDE)/i.test(k)) env[k] = v;
  }
  return {
    ...env,
    ANTHROPIC_BASE_URL: fakeUrl,
    ANTHROPIC_API_KEY: "fake-key",
    CLAUDE_CONFIG_DIR: configDir,
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
    DISABLE_AUTOUPDATER: "1",
    ...extra,
  };
}

/** Runs one `claude -p` to completion (or timeout) and returns everything it printed. */
export async function runClaude(opts: RunClaudeOptions): Promise<ClaudeRun> {
  const root = await mkdtemp(path.join(os.tmpdir(), "fake-model-cli-"));
  const dispose = () => rm(root, { recursive: true, force: true });
  try {
    const cwd = path.join(root, "work");
    const configDir = path.join(root, "config");
    await mkdir(cwd);
    await mkdir(configDir);
    const args = ["-p", opts.prompt, "--output-format", "stream-json", "--verbose"];
    const startedAt = Date.now();
    const child = spawn(CLAUDE_BIN, [...args, ...(opts.args ?? [])], {
      cwd,
      env: cliEnv(opts.fakeUrl, configDir, opts.env ?? {}),
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out = await collect(child, opts.timeoutMs ?? 60_000);
    const last = out.lines.findLast((l) => l.json.type === "result");
    const result = { result: last?.json, resultAt: last?.at };
    return { cwd, startedAt, ...out, ...result, [Symbol.asyncDispose]: dispose };
  } catch (e) {
    await dispose();
    throw e;
  }
}

/** Reads stream-json lines and stderr until the child exits (SIGKILL after `timeoutMs`). */
async function collect(child: ChildProcessByStdio<null, Readable, Readable>, timeoutMs: number) {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, timeoutMs);
  const lines: StreamLine[] = [];
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const reading = (async () => {
    for await (const line of createInterface({ input: child.stdout })) {
      if (line.trim() === "") continue;
      try {
        lines.push({ at: Date.now(), json: JSON.parse(line) as Record<string, unknown> });
      } catch {
        lines.push({ at: Date.now(), json: { type: "unparsed", text: line } });
      }
    }
  })();
  const [exitCode, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(
    (resolve, reject) => {
      child.on("exit", (code, sig) => resolve([code, sig]));
      child.on("error", reject);
    },
  ).finally(() => clearTimeout(timer));
  const exitedAt = Date.now();
  // A process the CLI left behind may still hold stdout open: stop reading after a grace.
  const grace = setTimeout(() => child.stdout.destroy(), 2_000);
  await reading.catch(() => undefined);
  clearTimeout(grace);
  return { lines, stderr, exitCode, signal, exitedAt, timedOut };
}
