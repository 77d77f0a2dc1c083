import { chmodSync, mkdirSync, rmSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import path from "node:path";
import type { Logger } from "../shared/log.ts";

/** Tokens the proxy saw in the model's answers. */
export interface MeteredUsage {
  inputTokens: number;
  outputTokens: number;
  requests: number;
}

/** One agent's model proxy: a Unix socket that reaches the real Messages API. */
export interface ModelProxy {
  socketPath: string;
  /** Tokens since the last take(); resets the count (one task's usage). */
  take(): MeteredUsage;
  close(): Promise<void>;
}

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "upgrade",
  "host",
  "content-length",
]);

/**
 * Serves the Anthropic API to one agent's container on a Unix socket mounted into it. The
 * AgentHost adds the real API key on the way out, so no key is ever inside a container,
 * and counts the tokens of every answer at this one place.
 */
export async function startModelProxy(opts: {
  socketPath: string;
  upstream: string;
  apiKey: string;
  log: Logger;
}): Promise<ModelProxy> {
  const upstream = new URL(opts.upstream || "https://api.anthropic.com");
  const client = upstream.protocol === "https:" ? https : http;
  let usage: MeteredUsage = { inputTokens: 0, outputTokens: 0, requests: 0 };

  const server = http.createServer((req, res) => {
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (!HOP_BY_HOP.has(k) && k !== "x-api-key" && k !== "authorization" && v !== undefined)
        headers[k] = v;
    }
    if (opts.apiKey) headers["x-api-key"] = opts.apiKey;
    headers["host"] = upstream.host;
    const target = new URL(req.url ?? "/", upstream);
    target.pathname = path.posix.join(upstream.pathname, target.pathname.replace(/^\//, "") || "");
    usage.requests++;
    const out = client.request(target, { method: req.method, headers }, (up) => {
      const outHeaders: http.OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(up.headers))
        if (!HOP_BY_HOP.has(k) && v !== undefined) outHeaders[k] = v;
      res.writeHead(up.statusCode ?? 502, outHeaders);
      const meter = usageMeter((u) => {
        usage.inputTokens += u.input;
        usage.outputTokens += u.output;
      });
      up.on("data", (chunk: Buffer) => {
        meter(chunk);
        res.write(chunk);
      });
      up.on("end", () => res.end());
      up.on("error", () => res.destroy());
    });
    out.on("error", (e) => {
      opts.log.warn("model proxy: upstream unreachable", { upstream: upstream.origin, error: e });
      if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          type: "error",
          error: { type: "api_error", message: `model proxy: ${e.message}` },
        }),
      );
    });
    req.pipe(out);
  });

  mkdirSync(path.dirname(opts.socketPath), { recursive: true });
  rmSync(opts.socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.socketPath, resolve);
  });
  // The container's user (not root) must be able to connect; the folder is the agent's own.
  chmodSync(opts.socketPath, 0o666);
  return {
    socketPath: opts.socketPath,
    take() {
      const u = usage;
      usage = { inputTokens: 0, outputTokens: 0, requests: 0 };
      return u;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * Reads usage numbers out of a Messages API answer as it streams by: SSE message_start /
 * message_delta events or a JSON body's usage. Tolerates chunks split anywhere.
 */
function usageMeter(add: (u: { input: number; output: number }) => void): (chunk: Buffer) => void {
  let buffer = "";
  return (chunk) => {
    buffer += chunk.toString("utf8");
    const lines = buffer.split("\n");
    buffer = lines.pop() ?? "";
    for (const line of lines) {
      const json = line.startsWith("data:") ? line.slice(5).trim() : line.trim();
      if (!json.startsWith("{") || !json.includes('"usage"')) continue;
      try {
        const obj = JSON.parse(json) as {
          type?: string;
          usage?: Usage;
          message?: { usage?: Usage };
        };
        const u = obj.type === "message_start" ? obj.message?.usage : obj.usage;
        if (!u) continue;
        // message_start carries input tokens; message_delta carries the final output count.
        add({
          input: obj.type === "message_delta" ? 0 : (u.input_tokens ?? 0),
          output: obj.type === "message_start" ? 0 : (u.output_tokens ?? 0),
        });
      } catch {
        // not a complete JSON line
      }
    }
  };
}

interface Usage {
  input_tokens?: number;
  output_tokens?: number;
}
