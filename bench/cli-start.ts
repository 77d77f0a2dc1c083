/**
 * How long the `conductor` CLI takes to answer, as a person runs it: `bin/conductor.js` (what
 * `node_modules/.bin/conductor` links to) started by its `#!/usr/bin/env node` line with Node 24
 * first on PATH, for `--help`, `tasks`, `get ID` and `submit PROMPT` against a live Orchestrator
 * on a temp folder, next to `node -e 0` (the same Node doing nothing). The runs take turns, so
 * load on the machine falls on all alike. When an older `node` is on PATH too (a system Node 20),
 * `--help` and `tasks` are timed again through it: the bin then runs itself on Node 24.
 * `tasks` is timed once more with CONDUCTOR_VENDOR_BUNDLE=0, its packages loaded as installed.
 * Prints the median (and p90) of N runs of each, and its ratio to `node -e 0`; target ≤ 150 ms,
 * set where `node -e 0` took 34 ms: ≤ 4.4× `node -e 0` on another machine.
 *
 *   npm run bench:cli-start        # N=15
 *   BENCH_RUNS=30 npm run bench:cli-start
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { BIN, startService } from "../test/harness.ts";

const RUNS = Number(process.env["BENCH_RUNS"] ?? 15);
if (!Number.isInteger(RUNS) || RUNS < 1 || RUNS > 1000)
  throw new Error(`BENCH_RUNS must be a whole number from 1 to 1000, got ${RUNS}`);
const TARGET_MS = 150;
/**
 * The same target as a ratio: the issue set 150 ms on a machine where `node -e 0` took 34 ms,
 * and machines of this kind differ by 2–3× in how fast Node starts (78–112 ms here), so the
 * ratio to `node -e 0` measured in the same run is what carries over.
 */
const TARGET_RATIO = TARGET_MS / 34;
const NO_BUNDLE = { CONDUCTOR_VENDOR_BUNDLE: "0" };
const NODE_DIR = path.dirname(process.execPath);

/** One command line to time: the program, its arguments, and the PATH it starts with. */
interface Subject {
  label: string;
  file: string;
  args: string[];
  path: string;
  /** Variables added to the common environment. */
  env?: Record<string, string>;
}

/** The milliseconds one run took, start to exit; a failed run stops the benchmark. */
function timeRun(s: Subject, env: Record<string, string>, cwd: string): number {
  const start = performance.now();
  const r = spawnSync(s.file, s.args, {
    cwd,
    env: { ...env, ...s.env, PATH: s.path },
    encoding: "utf8",
    timeout: 30_000,
  });
  const ms = performance.now() - start;
  if (r.status !== 0)
    throw new Error(`${s.label} failed (${r.status ?? r.signal}): ${r.stderr || r.error}`);
  return ms;
}

/** The value at quantile q of ms. */
function quantile(ms: number[], q: number): number {
  const sorted = [...ms].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** A folder of PATH, other than Node 24's and node_modules/.bin, whose `node` is older than 24. */
function olderNodeDir(): string | undefined {
  for (const dir of (process.env["PATH"] ?? "").split(path.delimiter)) {
    if (!dir || dir === NODE_DIR || dir.includes("node_modules")) continue;
    if (!safeList(dir).includes("node")) continue;
    try {
      const v = execFileSync(path.join(dir, "node"), ["-p", "process.versions.node"], {
        encoding: "utf8",
        timeout: 10_000,
      });
      if (Number(v.split(".")[0]) < 24) return dir;
    } catch {
      // Not a working node: look further.
    }
  }
  return undefined;
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

const dir = mkdtempSync(path.join(tmpdir(), "conductor-bench-cli-"));
// No AgentHost: submitted tasks stay queued, which is all `tasks` and `get` need.
const orchestrator = await startService(
  "orchestrator",
  ["--socket-dir", path.join(dir, "run"), "--data-dir", path.join(dir, "data")],
  {
    CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
    CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1",
  },
);
try {
  const cwd = path.join(dir, "cwd");
  const env = {
    HOME: process.env["HOME"] ?? dir,
    CONDUCTOR_SOCKET: String(orchestrator.ready["socket"]),
  };
  const fast = [NODE_DIR, ...(process.env["PATH"] ?? "/usr/bin:/bin").split(path.delimiter)].join(
    path.delimiter,
  );
  const conductor = (label: string, args: string[], p = fast): Subject => ({
    label,
    file: BIN,
    args,
    path: p,
  });
  mkdirSync(cwd);
  const first = execFileSync(BIN, ["submit", "a task for get"], {
    cwd,
    env: { ...env, PATH: fast },
    encoding: "utf8",
  }).trim();
  const subjects: Subject[] = [
    { label: "node -e 0", file: process.execPath, args: ["-e", "0"], path: fast },
    conductor("conductor --help", ["--help"]),
    conductor("conductor tasks", ["tasks"]),
    conductor("conductor get ID", ["get", first]),
    conductor("conductor submit PROMPT", ["submit", "a queued task"]),
    // Its gRPC and protobuf packages as installed (~145 modules), not from bin/vendor.js's bundle.
    { ...conductor("conductor tasks (no vendor bundle)", ["tasks"]), env: NO_BUNDLE },
  ];
  const older = olderNodeDir();
  if (older) {
    const v = execFileSync(path.join(older, "node"), ["--version"], { encoding: "utf8" }).trim();
    const slow = [older, ...fast.split(path.delimiter)].join(path.delimiter);
    subjects.push(
      conductor(`conductor --help (node ${v} on PATH)`, ["--help"], slow),
      conductor(`conductor tasks (node ${v} on PATH)`, ["tasks"], slow),
    );
  }
  // One untimed round fills the compile cache, as any earlier use of the command would.
  for (const s of subjects) timeRun(s, env, cwd);
  const times = new Map(subjects.map((s) => [s, [] as number[]]));
  for (let i = 0; i < RUNS; i++) for (const s of subjects) times.get(s)!.push(timeRun(s, env, cwd));

  const peer = quantile(times.get(subjects[0]!)!, 0.5);
  console.log(`CLI start, median of ${RUNS} runs each (p90), against a live Orchestrator:`);
  for (const s of subjects) {
    const ms = times.get(s)!;
    const median = quantile(ms, 0.5);
    const ok = (pass: boolean) => (s === subjects[0] ? "(peer)" : pass ? "ok" : "over");
    console.log(
      `  ${s.label.padEnd(40)} ${median.toFixed(0).padStart(5)} ms  (p90 ${quantile(ms, 0.9).toFixed(0).padStart(4)})` +
        `  ${(median / peer).toFixed(1).padStart(5)}× node -e 0` +
        `  target ≤ ${TARGET_MS} ms: ${ok(median <= TARGET_MS)}, ≤ ${TARGET_RATIO.toFixed(1)}×: ${ok(median / peer <= TARGET_RATIO)}`,
    );
  }
} finally {
  await orchestrator.stop();
  rmSync(dir, { recursive: true, force: true });
}
