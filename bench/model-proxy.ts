// Prints what the AgentHost's model proxy adds to a model call: the latency of a Messages API
// call made straight to the fake model (HTTP on loopback) against the same call through the
// proxy (HTTP on its Unix socket, as an agent makes it; the proxy adds the key, meters the
// answer's usage and forwards it on loopback), streamed and not, measured in the same run;
// and what reading a request's max_tokens costs per MiB of body, against JSON.parse.
// Run: npm run bench:model-proxy [-- --calls 2000]
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { startModelProxy } from "../services/agent-host/model-proxy.ts";
import { TopLevelValues } from "../services/agent-host/usage-meter.ts";
import { silentLogger } from "../services/shared/log.ts";
import { startFakeModel } from "../test/fake-model/server.ts";
import { scripted } from "../test/harness.ts";

const { values } = parseArgs({ options: { calls: { type: "string", default: "2000" } } });
const CALLS = Number(values.calls);
const WARM_UP = 50;
const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;

/** Where a call goes: the fake model's port, or the proxy's socket. */
type Target = { port: number } | { socketPath: string };

/** One Messages API call, its whole answer read; resolves with the time it took (ms). */
function call(target: Target, agent: http.Agent, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = http.request(
      {
        ...("port" in target ? { host: "127.0.0.1", port: target.port } : target),
        agent,
        path: "/v1/messages?beta=true",
        method: "POST",
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          "x-api-key": "sk-bench",
          "anthropic-version": "2023-06-01",
        },
      },
      (res) => {
        res.on("data", () => undefined);
        res.on("end", () => {
          if (res.statusCode !== 200) reject(new Error(`answered ${res.statusCode}`));
          else resolve(performance.now() - t0);
        });
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

/** A request the fake answers with one text turn and usage, like the CLI's main loop asks. */
const request = (stream: boolean) =>
  JSON.stringify({
    model: "claude-sonnet-4-5",
    max_tokens: 1024,
    stream,
    tools: [{ name: "Write", input_schema: { type: "object" } }],
    messages: [
      {
        role: "user",
        content: scripted([
          { text: "The work is done.", usage: { input_tokens: 1200, output_tokens: 80 } },
        ]),
      },
    ],
  });

await using model = await startFakeModel();
const dir = mkdtempSync(path.join(tmpdir(), "conductor-bench-proxy-"));
const proxy = await startModelProxy({
  socketPath: path.join(dir, "model.sock"),
  upstream: model.url,
  apiKey: "sk-bench",
  log: silentLogger,
});
proxy.limit(undefined); // open, as during a run
// Keep-alive on both paths, as the CLI's HTTP client keeps its connection.
const direct = new http.Agent({ keepAlive: true, maxSockets: 1 });
const proxied = new http.Agent({ keepAlive: true, maxSockets: 1 });
const port = Number(new URL(model.url).port);

try {
  console.log(
    `model proxy, ${CALLS} sequential Messages API calls each way (fake model on loopback):`,
  );
  for (const stream of [false, true]) {
    const body = request(stream);
    const d: number[] = [];
    const p: number[] = [];
    // The two alternate call by call, so neither gains from warming up first.
    for (let i = 0; i < WARM_UP + CALLS; i++) {
      const td = await call({ port }, direct, body);
      const tp = await call({ socketPath: proxy.socketPath }, proxied, body);
      if (i < WARM_UP) continue;
      d.push(td);
      p.push(tp);
    }
    // Every proxied answer was metered (what budgets and spend limits are made of).
    const metered = proxy.take();
    if (metered.requests !== WARM_UP + CALLS || metered.inputTokens !== 1200 * metered.requests)
      throw new Error(`the proxy metered ${JSON.stringify(metered)}`);
    const ms = (x: number) => `${x.toFixed(3)} ms`;
    const [d50, d99, p50, p99] = [pct(d, 0.5), pct(d, 0.99), pct(p, 0.5), pct(p, 0.99)];
    console.log(`  ${stream ? "streamed (SSE)" : "non-streamed (JSON)"}:`);
    console.log(`    direct        p50 ${ms(d50)}  p99 ${ms(d99)}`);
    console.log(`    through proxy p50 ${ms(p50)}  p99 ${ms(p99)}`);
    console.log(
      `    added         p50 +${ms(p50 - d50)}  p99 +${ms(p99 - d99)}  (${(p50 / d50).toFixed(2)}× the direct p50, ${(p99 / d99).toFixed(2)}× its p99)`,
    );
  }
  // What reading a request's max_tokens (and speed) costs the proxy per call, against parsing
  // the body whole: a 2 MB conversation of code, as the CLI resends it each turn.
  const line = '    const x = foo(bar, "baz"); // a line of code\n';
  const big = Buffer.from(
    JSON.stringify({
      model: "claude-sonnet-4-5",
      messages: Array.from({ length: 200 }, (_, i) => ({
        role: i % 2 ? "assistant" : "user",
        content: [{ type: "text", text: line.repeat(200) }],
      })),
      max_tokens: 32000,
    }),
  );
  const scan: number[] = [];
  const parse: number[] = [];
  for (let i = 0; i < 25; i++) {
    let t0 = performance.now();
    const read = new TopLevelValues(["max_tokens", "speed", "inference_geo"]);
    for (let at = 0; at < big.length; at += 65536)
      read.feed(big.subarray(at, at + 65536).toString("latin1"));
    if (read.values("max_tokens")?.max !== 32000) throw new Error("max_tokens not read");
    scan.push(performance.now() - t0);
    t0 = performance.now();
    JSON.parse(big.toString("utf8"));
    parse.push(performance.now() - t0);
  }
  const mb = big.length / 2 ** 20;
  const [s50, j50] = [pct(scan, 0.5) / mb, pct(parse, 0.5) / mb];
  console.log(`  a request's max_tokens read from ${mb.toFixed(1)} MiB of JSON (median of 25):`);
  console.log(
    `    streamed reader ${s50.toFixed(2)} ms/MiB, JSON.parse ${j50.toFixed(2)} ms/MiB (${(s50 / j50).toFixed(2)}×)`,
  );
} finally {
  direct.destroy();
  proxied.destroy();
  await proxy.close();
  rmSync(dir, { recursive: true, force: true });
}
