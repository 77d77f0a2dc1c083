// The Broker's tools served to one agent over MCP's Streamable HTTP transport, by the
// long-lived AgentHost on the agent's own model-proxy socket (no process per run).
import type http from "node:http";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema,
  ErrorCode,
  ListToolsRequestSchema,
  McpError,
} from "@modelcontextprotocol/sdk/types.js";
import type { Logger } from "../shared/log.ts";
import { instructions, runTool, TOOLS, type AgentCalls } from "./mcp-tools.ts";

/** The path the tools are served at, below the agent's model proxy. */
export const MCP_PATH = "/mcp";
/** Largest MCP request body read, in bytes: a message of the Broker's largest payload fits. */
export const MAX_MCP_BODY_BYTES = 4 * 2 ** 20;
/** MCP requests one agent may have in flight (tool calls waiting on the Broker, say). */
export const MAX_MCP_CALLS = 16;

/** Serves one HTTP request to the MCP endpoint; answers every request itself. */
export type McpHandler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** The MCP server for one request: the tools, calling the Broker as agent `c.agentId`. */
function toolServer(c: AgentCalls): McpServer {
  const mcp = new McpServer(
    { name: "conductor-broker", version: "1.0.0" },
    { capabilities: { tools: { listChanged: false } }, instructions: instructions(c.agentId) },
  );
  // The tools' JSON schemas and argument errors are ours, given as they are: no schema library.
  mcp.server.setRequestHandler(ListToolsRequestSchema, () => ({
    tools: Object.entries(TOOLS).map(([name, t]) => ({
      name,
      description: t.description,
      inputSchema: t.inputSchema,
    })),
  }));
  mcp.server.setRequestHandler(CallToolRequestSchema, (req, extra) => {
    const { name, arguments: args } = req.params;
    const tool = Object.hasOwn(TOOLS, name) ? TOOLS[name] : undefined;
    if (!tool) throw new McpError(ErrorCode.InvalidParams, `unknown tool: ${name}`);
    return runTool(tool, name, args ?? {}, c, extra.signal);
  });
  return mcp;
}

/**
 * The MCP endpoint of one agent: POSTs of JSON-RPC messages (stateless: no session is kept,
 * each request gets a fresh server), answered as an SSE stream that carries keep-alive comments
 * every 15 s, so a call waiting on the Broker for up to 10 minutes is not cut as idle. GET and
 * DELETE (sessions, server-sent notifications) are 405. Bounds: bodies up to
 * {@link MAX_MCP_BODY_BYTES} (413), {@link MAX_MCP_CALLS} requests at once (429 beyond).
 * The agent is the one whose socket the request came on: nothing it sends names it.
 */
export function mcpHandler(c: AgentCalls, log: Logger): McpHandler {
  let inFlight = 0;
  return (req, res) => {
    if (req.method !== "POST")
      return rpcError(res, 405, "Method not allowed: this MCP server is stateless (POST only).", {
        allow: "POST",
      });
    if (inFlight >= MAX_MCP_CALLS)
      return rpcError(res, 429, `Too many MCP requests at once (at most ${MAX_MCP_CALLS}).`);
    inFlight++;
    const mcp = toolServer(c);
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      maxRequestBodySize: MAX_MCP_BODY_BYTES,
    });
    res.once("close", () => {
      inFlight--;
      mcp.close().catch(() => {}); // closes the transport, aborting calls still running
    });
    mcp
      .connect(transport)
      .then(() => transport.handleRequest(req, res))
      .catch((e: unknown) => {
        log.error("MCP request failed", { agent_id: c.agentId, error: e });
        if (res.headersSent) res.destroy();
        else rpcError(res, 500, "Internal error");
      });
  };
}

/** A JSON-RPC error answer with no id, as the SDK gives its own transport-level errors. */
function rpcError(
  res: http.ServerResponse,
  status: number,
  message: string,
  headers: http.OutgoingHttpHeaders = {},
): void {
  const body = JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message }, id: null });
  res.writeHead(status, {
    ...headers,
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}
