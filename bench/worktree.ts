/**
 * A task's git workspace against plain git: on a repository of 10,000 small files, the
 * Workspaces' prepare() + finish() of an attempt that changes nothing (fetch, base, worktree,
 * checkout, durable record, commit check, removal) against `git worktree add --detach` +
 * `git worktree remove` of the same repository (with git's default sequential checkout, and
 * with one checkout worker per core as ours does). Prints medians of N runs and the ratios.
 * Each waits PAUSE_MS, untimed, between its two halves, as a task's run would: git keeps file
 * times to the second, so a file written in the second its index was is read again by every
 * command after, until an index is written a second later (racy git).
 *
 *   npm run bench:worktree                  # N=5, 10,000 files
 *   BENCH_RUNS=9 BENCH_FILES=50000 npm run bench:worktree
 */
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { Workspaces } from "../services/agent-host/workspace/index.ts";
import { silentLogger } from "../services/shared/log.ts";

const RUNS = Number(process.env["BENCH_RUNS"] ?? 5);
const FILES = Number(process.env["BENCH_FILES"] ?? 10_000);
const run = promisify(execFile);
/** Between a worktree's making and its end: more than git's one-second racy window. */
const PAUSE_MS = 1100;
const pause = () => new Promise((resolve) => setTimeout(resolve, PAUSE_MS));
const env = {
  ...process.env,
  GIT_CONFIG_NOSYSTEM: "1",
  GIT_CONFIG_GLOBAL: "/dev/null",
  GIT_AUTHOR_NAME: "bench",
  GIT_AUTHOR_EMAIL: "bench@example.com",
  GIT_COMMITTER_NAME: "bench",
  GIT_COMMITTER_EMAIL: "bench@example.com",
};
const git = (cwd: string, ...args: string[]) => run("git", args, { cwd, env, maxBuffer: 1 << 26 });

/** "median … (p10, p90, n)" of durations in ms. */
function summary(ms: number[]): string {
  const sorted = [...ms].sort((a, b) => a - b);
  const at = (q: number) =>
    (sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN).toFixed(0);
  return `median ${at(0.5).padStart(4)} ms  (p10 ${at(0.1)}, p90 ${at(0.9)}, n=${ms.length})`;
}

const median = (ms: number[]) => [...ms].sort((a, b) => a - b)[Math.floor(ms.length / 2)] ?? NaN;

/**
 * Times `n` rounds of the contenders, interleaved (one run of each per round, in turn), so that
 * a machine getting slower or faster meanwhile weighs on each alike; `warm` runs first, untimed.
 * Each contender returns the ms it took (its pause not counted).
 */
async function rounds(
  n: number,
  contenders: Array<(i: number) => Promise<number>>,
  warm: (() => Promise<number>) | undefined,
): Promise<number[][]> {
  await warm?.();
  const all = contenders.map(() => [] as number[]);
  for (let i = 0; i < n; i++) for (const [k, fn] of contenders.entries()) all[k]!.push(await fn(i));
  return all;
}

/** Times `first`, then, after the pause, `then`: their ms together. */
async function halves(
  first: () => Promise<unknown>,
  then: () => Promise<unknown>,
): Promise<number> {
  const t0 = performance.now();
  await first();
  const t1 = performance.now();
  await pause();
  const t2 = performance.now();
  await then();
  return t1 - t0 + (performance.now() - t2);
}

const dir = mkdtempSync(path.join(tmpdir(), "conductor-bench-worktree-"));
try {
  const src = path.join(dir, "src");
  for (let i = 0; i < FILES; i++) {
    const sub = path.join(src, `d${Math.floor(i / 100)}`);
    if (i % 100 === 0) mkdirSync(sub, { recursive: true });
    writeFileSync(path.join(sub, `f${i}.txt`), `file ${i}\n`.repeat(4));
  }
  await git(src, "init", "-q", "-b", "main");
  await git(src, "add", "-A");
  await git(src, "commit", "-q", "-m", "files");
  const wts = path.join(dir, "wt");
  mkdirSync(wts);
  console.log(
    `\nrepository of ${FILES} files, ${RUNS} runs each (${(await git(src, "version")).stdout.trim()})`,
  );
  const line = (what: string, figures: string) => console.log(`  ${what}`.padEnd(58) + figures);

  const ws = new Workspaces({
    dataDir: path.join(dir, "data"),
    author: { name: "bench", email: "bench@example.com" },
    log: silentLogger,
  });
  const ours = async (i: number) => {
    const req = {
      taskId: `bench-${i + 1}`,
      attempt: 1,
      agentId: "a",
      repository: src,
      ref: "",
      branch: "",
      push: false,
    };
    let p: Awaited<ReturnType<typeof ws.prepare>>;
    return halves(
      async () => (p = await ws.prepare(req, path.join(wts, `ours-${i + 1}`))),
      async () => {
        const change = await ws.finish(p, { sessionId: "s", outcome: "succeeded" });
        if (change.committed) throw new Error("nothing changed, yet a commit was made");
      },
    );
  };
  const plain = (workers: string) => async (i: number) => {
    const wt = path.join(wts, `plain-${workers}-${i + 1}`);
    const add = ["-c", `checkout.workers=${workers}`, "worktree", "add", "--quiet", "--detach"];
    return halves(
      () => git(src, ...add, wt, "HEAD"),
      () => git(src, "worktree", "remove", wt),
    );
  };
  // The warm-up makes the cached clone; ours checks out with one worker per core
  // (checkout.workers=0), plain git's default is one: both are shown.
  const [o = [], seq = [], par = []] = await rounds(RUNS, [ours, plain("1"), plain("0")], () =>
    ours(-1),
  );
  line("Workspaces prepare() + finish(), no change", summary(o));
  line("git worktree add --detach + git worktree remove", summary(seq));
  line("the same, plain git with checkout.workers=0", summary(par));
  line("ratio ours / plain git", `${(median(o) / median(seq)).toFixed(2)}x`);
  line(
    "ratio ours / plain git with checkout.workers=0",
    `${(median(o) / median(par)).toFixed(2)}x`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
