// What an HTTP MCP server costs the Claude Code CLI itself, with no Conductor in the way: the
// bare CLI (same fake model, same scripted task) with and without `--mcp-config` naming a
// trivial stateless MCP server (the SDK's, in this process, one tool), alternating, median
// of --runs. Tells the CLI's own MCP start-up apart from what the AgentHost's tools add.
//   node bench/cli-mcp.ts [--runs 8]
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { startFakeModel } from "../test/fake-model/server.ts";
import { scripted } from "../test/harness.ts";
import { runBareCli } from "./bare-cli.ts";

const { values } = parseArgs({ options: { runs: { type: "string", default: "8" } } });
const RUNS = Math.min(Math.max(Number(values.runs) || 8, 1), 100);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

await using model = await startFakeModel();
let requests = 0;
const server = http.createServer((req, res) => {
  requests++;
  if (req.method !== "POST") {
    res.writeHead(405).end();
    return;
  }
  const mcp = new McpServer({ name: "bench", version: "1" });
  mcp.registerTool("ping", { description: "answers pong" }, () => ({
    content: [{ type: "text", text: "pong" }],
  }));
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.once("close", () => {
    mcp.close().catch(() => undefined);
  });
  mcp
    .connect(transport)
    .then(() => transport.handleRequest(req, res))
    .catch(() => res.destroy());
});
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`;
const prompt = scripted([{ write: { path: "bench.txt", content: "x" } }, { text: "done" }]);
const dir = mkdtempSync(path.join(tmpdir(), "conductor-bench-cli-mcp-"));

async function once(withMcp: boolean): Promise<number> {
  const config = JSON.stringify({ mcpServers: { bench: { type: "http", url } } });
  const start = performance.now();
  await runBareCli(
    prompt,
    dir,
    model.url,
    withMcp ? ["--mcp-config", config, "--strict-mcp-config"] : [],
  );
  return performance.now() - start;
}

try {
  await once(false);
  await once(true);
  const bare: number[] = [];
  const withMcp: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    bare.push(await once(false));
    withMcp.push(await once(true));
  }
  const [b, m] = [median(bare), median(withMcp)];
  console.log(
    `bare CLI ${b.toFixed(0)} ms, with one HTTP MCP server ${m.toFixed(0)} ms: ` +
      `+${(m - b).toFixed(0)} ms, ${(m / b).toFixed(3)}× (median of ${RUNS}; ` +
      `${(requests / (RUNS + 1)).toFixed(1)} MCP requests per run)`,
  );
} finally {
  server.close();
  rmSync(dir, { recursive: true, force: true });
}
