// What both sides of bench/peers.ts share: the instant fake CLI, concurrent callers, statistics.
import { spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

/** The two lines the Claude Code CLI prints first and last with --output-format stream-json. */
const LINES = [
  {
    type: "system",
    subtype: "init",
    session_id: "peers",
    tools: [],
    mcp_servers: [],
    model: "fake",
  },
  {
    type: "result",
    subtype: "success",
    is_error: false,
    result: "ok",
    session_id: "peers",
    num_turns: 1,
    duration_ms: 0,
    total_cost_usd: 0,
    usage: { input_tokens: 0, output_tokens: 0 },
  },
].map((l) => JSON.stringify(l));

/**
 * Writes an instant fake CLI (a /bin/sh script printing the `system` init line and a
 * `result` line, then exiting 0) into a fresh temp folder readable by every uid (the agents
 * run as their own), and returns its path.
 */
export function writeFakeCli(): string {
  const dir = mkdtempSync(path.join(tmpdir(), "peers-cli-"));
  chmodSync(dir, 0o755);
  const file = path.join(dir, "claude");
  writeFileSync(file, `#!/bin/sh\nprintf '%s\\n' '${LINES.join("' '")}'\n`, { mode: 0o755 });
  return file;
}

/** Runs the fake CLI as a child process (as a worker running the real one would), to its exit. */
export function runFakeCli(file: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, ["-p", "--output-format", "stream-json", "--", "ok"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    child.stdout.resume();
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0 ? resolve() : reject(new Error(`fake CLI exited ${code}`)),
    );
  });
}

/** Calls fn(0) … fn(n - 1) from `c` concurrent callers, each calling the next when it is done. */
export async function callers(
  n: number,
  c: number,
  fn: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(c, n) }, async () => {
      while (next < n) await fn(next++);
    }),
  );
}

/**
 * Items per second when `n` items go `batch` at a time (the last batch whole: n rounded up),
 * each batch one call of `send`, from `c` concurrent callers.
 */
export async function batchRate(
  n: number,
  batch: number,
  c: number,
  send: () => Promise<unknown>,
): Promise<number> {
  const batches = Math.ceil(n / batch);
  const t0 = performance.now();
  await callers(batches, c, async () => void (await send()));
  return (batches * batch) / ((performance.now() - t0) / 1000);
}

/** The p-th percentile (0–100, nearest rank) of xs; NaN when empty. */
export function pct(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** The median of xs (the lower one of an even count). */
export const median = (xs: number[]): number => pct(xs, 50);

const t0 = performance.now();

/** Progress on stderr, with seconds since the bench started. */
export function progress(what: string): void {
  process.stderr.write(`[peers ${((performance.now() - t0) / 1000).toFixed(0)}s] ${what}\n`);
}

/**
 * CPU time (user + system, ms) process `pid` has used so far, from /proc (clock ticks of
 * 10 ms); with `reaped`, also that of the children it has waited for (proc(5): cutime, cstime).
 */
export function cpuMsOf(pid: number, reaped = false): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  const own = Number(fields[11]) + Number(fields[12]);
  return (reaped ? own + Number(fields[13]) + Number(fields[14]) : own) * 10;
}

/**
 * Runs `work` (which does `n` operations) and gives its rate and the CPU each operation cost
 * (µs): in this process (the callers' client) and in the server process `serverPid`.
 */
export async function withCpu(
  n: number,
  serverPid: number,
  work: () => Promise<number>,
): Promise<{ rate: number; clientUs: number; serverUs: number }> {
  const server0 = cpuMsOf(serverPid);
  const client0 = process.cpuUsage();
  const rate = await work();
  const client = process.cpuUsage(client0);
  return {
    rate,
    clientUs: (client.user + client.system) / n,
    serverUs: ((cpuMsOf(serverPid) - server0) * 1000) / n,
  };
}

const cleanups = new Set<() => void>();
let stopHandled = false;

/**
 * Runs `cleanup` (synchronous: kill, remove) should the bench be stopped (Ctrl-C, SIGTERM)
 * before the returned function is called; a stopped bench then exits 130.
 */
export function cleanUpIfStopped(cleanup: () => void): () => void {
  if (!stopHandled) {
    stopHandled = true;
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      process.once(signal, () => {
        for (const c of cleanups) {
          try {
            c();
          } catch (e) {
            console.error(`bench: cleaning up after ${signal}: ${(e as Error).message}`);
          }
        }
        process.exit(130);
      });
    }
  }
  cleanups.add(cleanup);
  return () => cleanups.delete(cleanup);
}
