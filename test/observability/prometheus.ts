import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** A scrape target: a job name and a /metrics URL. */
export interface Target {
  job: string;
  url: string;
}

/** Debian's real Prometheus server, scraping the given targets, on a free 127.0.0.1 port. */
export interface Prometheus extends AsyncDisposable {
  url: string;
  /** One instant query; the series' labels and values. */
  query(promql: string): Promise<{ metric: Record<string, string>; value: number }[]>;
  /** Polls a query (bounded) until `ok` holds for its result, which it returns. */
  waitFor(
    promql: string,
    ok: (r: { metric: Record<string, string>; value: number }[]) => boolean,
    timeoutMs?: number,
  ): Promise<{ metric: Record<string, string>; value: number }[]>;
  close(): Promise<void>;
}

/** A port that was free a moment ago (Prometheus takes its listen address as a flag). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Starts `prometheus` (apt package `prometheus`) scraping every 250 ms. */
export async function startPrometheus(targets: Target[]): Promise<Prometheus> {
  const dir = mkdtempSync(path.join(tmpdir(), "conductor-prometheus-"));
  const jobs = new Map<string, string[]>();
  for (const t of targets) {
    const u = new URL(t.url);
    jobs.set(t.job, [...(jobs.get(t.job) ?? []), u.host]);
  }
  const config = {
    global: { scrape_interval: "250ms", scrape_timeout: "200ms", evaluation_interval: "1s" },
    scrape_configs: [...jobs].map(([job, hosts]) => ({
      job_name: job,
      metrics_path: "/metrics",
      static_configs: [{ targets: hosts }],
    })),
  };
  const configFile = path.join(dir, "prometheus.yml");
  writeFileSync(configFile, JSON.stringify(config)); // JSON is YAML
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const proc: ChildProcess = spawn(
    "prometheus",
    [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${path.join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  proc.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  const spawned = new Promise<void>((resolve, reject) => {
    proc.once("spawn", resolve);
    proc.once("error", (e) =>
      reject(new Error(`cannot run prometheus (apt-get install prometheus): ${e.message}`)),
    );
  });
  const close = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await spawned;
    await until(
      async () => (await fetch(`${url}/-/ready`)).ok,
      30_000,
      () => stderr,
    );
  } catch (e) {
    await close();
    throw e;
  }

  const query = async (promql: string) => {
    const res = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`);
    const body = (await res.json()) as {
      status: string;
      error?: string;
      data: { result: { metric: Record<string, string>; value: [number, string] }[] };
    };
    if (body.status !== "success") throw new Error(`query ${promql}: ${body.error}`);
    return body.data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
  };
  return {
    url,
    query,
    async waitFor(promql, ok, timeoutMs = 30_000) {
      let last: Awaited<ReturnType<typeof query>> = [];
      await until(
        async () => ok((last = await query(promql))),
        timeoutMs,
        () => `${promql} last gave ${JSON.stringify(last)}`,
      );
      return last;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** Polls `check` every 100 ms until it holds; fails after timeoutMs, saying what it saw. */
async function until(
  check: () => Promise<boolean>,
  timeoutMs: number,
  seen: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${seen()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** `promtool check metrics` on a /metrics body: its complaints (empty when it has none). */
export async function promtoolCheckMetrics(body: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const proc = spawn("promtool", ["check", "metrics"], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    proc.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    proc.stderr.setEncoding("utf8").on("data", (d: string) => (out += d));
    proc.once("error", reject);
    proc.once("exit", (code) => resolve(code === 0 ? out.trim() : `exit ${code}: ${out}`));
    proc.stdin.end(body);
  });
}

/** Runs promtool with arguments; resolves with its output, rejects (with it) on failure. */
export async function promtool(...args: string[]): Promise<string> {
  const { stdout, stderr } = await run("promtool", args);
  return stdout + stderr;
}
