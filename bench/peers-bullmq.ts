// The peer side of bench/peers.ts: BullMQ on a redis-server this bench starts itself, durable
// as Conductor is (AOF, fsync always), on a Unix socket in a fresh temp folder.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { Queue, Worker, type Processor } from "bullmq";
import { batchRate, callers, cleanUpIfStopped, runFakeCli } from "./peers-common.ts";

/** A redis-server started for the bench; dispose stops it and removes its folder. */
export interface Redis extends AsyncDisposable {
  socket: string;
  /** The redis-server process (its CPU time is read from /proc). */
  pid: number;
}

/** Throws, saying how to install it, when `redis-server` is not on PATH. */
export function checkRedisInstalled(): void {
  const probe = spawnSync("redis-server", ["--version"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0)
    throw new Error(
      "redis-server is not installed (the peer of this bench): install Debian's with `apt-get install redis-server`",
    );
}

/**
 * Starts `redis-server` on a Unix socket in a fresh temp folder: no TCP port, no RDB
 * snapshots, every write appended and fsynced before it is answered. Ready within 15 s or throws.
 */
export async function startRedis(): Promise<Redis> {
  const dir = mkdtempSync(path.join(tmpdir(), "peers-redis-"));
  const socket = path.join(dir, "redis.sock");
  const proc: ChildProcess = spawn(
    "redis-server",
    [
      ...["--port", "0", "--unixsocket", socket, "--unixsocketperm", "700", "--dir", dir],
      ...["--appendonly", "yes", "--appendfsync", "always", "--save", ""],
      ...["--daemonize", "no", "--loglevel", "notice"],
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  const forget = cleanUpIfStopped(() => {
    proc.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
    await exited;
    rmSync(dir, { recursive: true, force: true });
    forget();
  };
  let output = "";
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`redis-server not ready in 15 s:\n${output}`)),
        15_000,
      );
      createInterface({ input: proc.stdout! }).on("line", (line) => {
        output += `${line}\n`;
        if (/ready to accept connections/i.test(line)) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`redis-server exited with ${code}:\n${output}`));
      });
    });
  } catch (e) {
    await stop();
    throw e;
  }
  return { socket, pid: proc.pid!, [Symbol.asyncDispose]: stop };
}

let queues = 0;

/** A fresh queue (new name) on `redis`, with a worker when `processor` is given. */
async function open(redis: Redis, concurrency: number, processor?: Processor) {
  const name = `peers-${process.pid}-${++queues}`;
  const connection = { path: redis.socket, maxRetriesPerRequest: null };
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  const worker = processor ? new Worker(name, processor, { connection, concurrency }) : undefined;
  await worker?.waitUntilReady();
  return {
    queue,
    worker,
    async close() {
      await worker?.close();
      await queue.close();
    },
  };
}

/** Jobs added and acknowledged per second: `n` adds from `c` concurrent callers, no worker. */
export async function bullAdds(redis: Redis, n: number, c: number): Promise<number> {
  const q = await open(redis, 1);
  try {
    const t0 = performance.now();
    await callers(n, c, async (i) => void (await q.queue.add("job", { i })));
    return n / ((performance.now() - t0) / 1000);
  } finally {
    await q.close();
  }
}

/** Jobs acknowledged per second when added `batch` at a time (addBulk), from `c` callers. */
export async function bullBulkAdds(
  redis: Redis,
  n: number,
  batch: number,
  c: number,
): Promise<number> {
  const q = await open(redis, 1);
  try {
    const jobs = Array.from({ length: batch }, (_, i) => ({ name: "job", data: { i } }));
    return await batchRate(n, batch, c, () => q.queue.addBulk(jobs));
  } finally {
    await q.close();
  }
}

/**
 * Jobs completed per second, end to end: `n` adds from `c` callers while a worker of
 * `concurrency` runs each (a no-op, or the fake CLI at `fakeCli` as a child process).
 */
export async function bullCompletions(
  redis: Redis,
  o: { n: number; callers: number; concurrency: number; fakeCli?: string; timeoutMs: number },
): Promise<number> {
  const fakeCli = o.fakeCli;
  const q = await open(redis, o.concurrency, fakeCli ? () => runFakeCli(fakeCli) : async () => {});
  try {
    let done = 0;
    const all = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`BullMQ: ${done}/${o.n} jobs done in time`)),
        o.timeoutMs,
      );
      q.worker!.on("completed", () => {
        if (++done === o.n) {
          clearTimeout(timer);
          resolve();
        }
      });
      q.worker!.on("failed", (_job, e) => reject(e));
    });
    const t0 = performance.now();
    await callers(o.n, o.callers, async (i) => void (await q.queue.add("job", { i })));
    await all;
    return o.n / ((performance.now() - t0) / 1000);
  } finally {
    await q.close();
  }
}

/** Milliseconds from calling add() to the worker starting the job, one job at a time. */
export async function bullStartLatencies(redis: Redis, samples: number): Promise<number[]> {
  const started = new Map<number, (t: number) => void>();
  const q = await open(redis, 1, async (job) => {
    started.get((job.data as { i: number }).i)?.(performance.now());
  });
  try {
    const out: number[] = [];
    for (let i = 0; i < samples; i++) {
      const start = new Promise<number>((resolve) => started.set(i, resolve));
      const completed = new Promise<void>((resolve) =>
        q.worker!.once("completed", () => resolve()),
      );
      const t0 = performance.now();
      await q.queue.add("job", { i });
      out.push((await start) - t0);
      await completed;
    }
    return out;
  } finally {
    await q.close();
  }
}
