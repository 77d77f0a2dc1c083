// The Broker's MCP tools as an AgentHost serves them on an agent's model-proxy socket: the
// protocol over Streamable HTTP, then the REAL Claude Code CLI calling the tools (scripted by
// the fake model) through a loopback port forwarded to that socket, against a running Broker.
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MessageType } from "../../gen/conductor/v1/broker_pb.js";
import { runClaude, type ClaudeRun } from "../../test/fake-model/cli.ts";
import { startFakeModel, type FakeModel } from "../../test/fake-model/server.ts";
import { LATEST_PROTOCOL_VERSION } from "@modelcontextprotocol/sdk/types.js";
import { localBroker, MCP_ALLOWED_TOOLS, setUpAgentBroker } from "./access.ts";
import { MAX_MCP_BODY_BYTES } from "./mcp-http.ts";
import { TOOLS } from "./mcp-tools.ts";
import {
  mcpClient,
  postMcp,
  serveAgent,
  startTestBroker,
  type AgentEndpoint,
  type TestBroker,
} from "./testing.ts";

const script = (steps: unknown[]) => `Work.\n<fake-script>${JSON.stringify(steps)}</fake-script>`;
const tool = (name: string, input: Record<string, unknown>) => ({
  tool: { name: `mcp__conductor__${name}`, input },
});

/** The tool_result blocks of a run, in order, with their text. */
function toolResults(run: ClaudeRun): { text: string; isError: boolean }[] {
  const out: { text: string; isError: boolean }[] = [];
  for (const { json } of run.lines) {
    if (json.type !== "user") continue;
    const content = (json.message as { content?: unknown[] } | undefined)?.content ?? [];
    for (const block of content as {
      type?: string;
      is_error?: boolean;
      content?: unknown;
    }[]) {
      if (block.type !== "tool_result") continue;
      const text = Array.isArray(block.content)
        ? (block.content as { text?: string }[]).map((c) => c.text ?? "").join("\n")
        : typeof block.content === "string"
          ? block.content
          : "";
      out.push({ text, isError: block.is_error === true });
    }
  }
  return out;
}

describe("the Broker's MCP tools, served by the AgentHost on an agent's socket", () => {
  let broker: TestBroker;
  let fake: FakeModel;
  let agent1: AgentEndpoint;
  let agent2: AgentEndpoint;

  beforeAll(async () => {
    broker = await startTestBroker();
    fake = await startFakeModel();
    // Each agent's model proxy, serving its tools, as its AgentHost makes it.
    agent1 = await broker.agentEndpoint("agent-1", fake.url);
    agent2 = await broker.agentEndpoint("agent-2", fake.url);
  });
  afterAll(async () => {
    await agent1?.close();
    await agent2?.close();
    await fake?.close();
    await broker?.close();
  });

  /** Runs the real CLI as agent-1 with the Broker's tools, through its proxy. */
  const asAgent1 = (steps: unknown[], tools: string[] = []) =>
    runClaude({
      fakeUrl: agent1.url,
      prompt: script(steps),
      args: [...agent1.agent.cliArgs, "--allowedTools", [MCP_ALLOWED_TOOLS, ...tools].join(",")],
    });

  it("gives the CLI an HTTP MCP server below its model API's URL, not a command to start", () => {
    expect(agent1.agent.registered).toBe(true);
    expect(agent1.agent.cliArgs).toEqual([
      "--mcp-config",
      JSON.stringify({
        mcpServers: {
          conductor: {
            type: "http",
            url: "${ANTHROPIC_BASE_URL}/mcp",
            headers: { "x-api-key": "${CONDUCTOR_RUN_KEY}" }, // the run's key (model-proxy.ts)
          },
        },
      }),
      "--strict-mcp-config",
    ]);
  });

  it("speaks MCP over Streamable HTTP, knowing the agent by the socket its call came on", async () => {
    const url = `${agent1.url}/mcp`;
    const mcp = mcpClient(url);
    const discover = await mcp.call("server/discover", {});
    expect(discover.error).toMatchObject({ code: -32601 });
    const init = await mcp.call("initialize", {
      protocolVersion: "2025-11-25",
      capabilities: {},
      clientInfo: { name: "test", version: "0" },
    });
    expect(init.result).toMatchObject({
      protocolVersion: "2025-11-25",
      capabilities: { tools: {} },
      serverInfo: { name: "conductor-broker" },
    });
    expect(init.result?.instructions).toMatch(/^You are agent "agent-1" in a Conductor fleet/);
    const old = await mcp.call("initialize", {
      protocolVersion: "1999-01-01",
      capabilities: {},
      clientInfo: { name: "test", version: "0" },
    });
    expect(old.result?.protocolVersion).toBe(LATEST_PROTOCOL_VERSION);
    const notified = await postMcp(url, { jsonrpc: "2.0", method: "notifications/initialized" });
    expect(notified.status).toBe(202);
    const list = (await mcp.call("tools/list")).result as {
      tools: { name: string; description: string; inputSchema: unknown }[];
    };
    expect(list.tools.map((t) => t.name).sort()).toEqual([
      "list_agents",
      "read_messages",
      "reply",
      "request",
      "send_message",
    ]);
    // The schemas as written, e.g. send_message's (no schema library rewrites them).
    expect(list.tools.find((t) => t.name === "send_message")?.inputSchema).toEqual(
      TOOLS["send_message"]!.inputSchema,
    );
    const agents = await mcp.tool("list_agents", {});
    expect(agents.text).toMatch(/- agent-1 \(you\): /);
    expect(agents.text).toMatch(/- agent-2: not connected, 0 waiting/);
    // The same call on agent-2's socket is agent-2's.
    expect((await mcpClient(`${agent2.url}/mcp`).tool("list_agents", {})).text).toMatch(
      /- agent-2 \(you\): /,
    );
    const bad = await mcp.tool("send_message", { message: "x" });
    expect(bad).toEqual({
      isError: true,
      text: 'The Broker refused send_message: invalid_argument: give exactly one of "to" or "topic"',
    });
    // reply's `to` names the requester: the Broker answers only a request that agent made.
    const wrongAsker = await mcp.tool("reply", {
      correlation_id: "c-x",
      to: "agent-2",
      message: "x",
    });
    expect(wrongAsker.isError).toBe(true);
    expect(wrongAsker.text).toMatch(
      /not_found: no open request by "agent-2" with correlation id "c-x" was sent to "agent-1"/,
    );
    const unknown = await mcp.call("tools/call", { name: "nope", arguments: {} });
    expect(unknown.error?.message).toMatch(/unknown tool: nope/);
    expect(unknown.error).toMatchObject({
      code: -32602,
    });
    expect((await mcp.call("ping")).result).toEqual({});
  });

  it("keeps no sessions and bounds what it reads", async () => {
    const url = `${agent1.url}/mcp`;
    for (const method of ["GET", "DELETE"]) {
      const res = await fetch(url, { method, headers: { accept: "text/event-stream" } });
      expect(res.status, method).toBe(405);
      await res.body?.cancel();
    }
    const big = await fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
      },
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 1,
        method: "tools/call",
        params: {
          name: "send_message",
          arguments: { to: "agent-2", message: "x".repeat(MAX_MCP_BODY_BYTES) },
        },
      }),
    });
    expect(big.status).toBe(413);
    await big.body?.cancel();
    // Other paths of the proxy are still refused; the model API is still forwarded.
    const other = await fetch(`${agent1.url}/mcp/x`, { method: "POST", body: "{}" });
    expect(other.status).toBe(403);
    await other.body?.cancel();
  });

  it("lets the real CLI send a message; refusals reach the model as tool errors", async () => {
    await using run = await asAgent1([
      tool("send_message", { to: "nobody", message: "lost?" }),
      tool("send_message", { to: "agent-2", message: "hello from the CLI", type: "status_update" }),
      { text: "sent" },
    ]);
    expect(run.result, run.stderr).toMatchObject({ is_error: false, result: "sent" });
    const results = toolResults(run);
    expect(results[0]).toMatchObject({ isError: true });
    expect(results[0]?.text).toMatch(/not_found: agent "nobody" is not known to the Broker/);
    expect(results[1]?.text).toMatch(/^Sent message [0-9a-f-]+ to agent-2\.$/);
    const { messages } = await broker.agent("agent-2").receive({});
    expect(messages.map((m) => [m.sender, m.type, m.payload])).toEqual([
      ["agent-1", MessageType.STATUS_UPDATE, "hello from the CLI"],
    ]);
    await broker.agent("agent-2").ack({ messageIds: messages.map((m) => m.id) });
  });

  it("lets the real CLI ask another agent and write the reply into a file", async () => {
    const abort = new AbortController();
    const answering = (async () => {
      for await (const { message } of broker
        .agent("agent-2")
        .subscribe({}, { signal: abort.signal })) {
        await broker.agent("agent-2").reply({
          correlationId: message!.correlationId,
          payload: `42 (you asked: ${message!.payload})`,
        });
        await broker.agent("agent-2").ack({ messageIds: [message!.id] });
        return message!;
      }
      throw new Error("the stream ended before a request came");
    })();
    await using run = await asAgent1(
      [
        tool("request", { to: "agent-2", message: "what is 6*7?", timeout_seconds: 30 }),
        { write: { path: "answer.txt", content: "{{last_tool_result}}" } },
        { text: "done" },
      ],
      ["Write"],
    );
    const asked = await answering;
    abort.abort();
    expect(run.result, run.stderr).toMatchObject({ is_error: false, result: "done" });
    expect(asked).toMatchObject({ sender: "agent-1", type: MessageType.TASK_REQUEST });
    const answer = readFileSync(path.join(run.cwd, "answer.txt"), "utf8");
    expect(answer).toBe(
      `Reply from agent-2 (correlation id ${asked.correlationId}):\n42 (you asked: what is 6*7?)`,
    );
  });

  it("lets the real CLI read a request from its inbox and reply to it", async () => {
    const asking = broker.agent("agent-2").request({
      receiver: "agent-1",
      payload: "please review PR 7",
      correlationId: "c-cli",
      timeoutMs: 60_000,
    });
    await using run = await asAgent1([
      tool("read_messages", { wait_seconds: 30 }),
      tool("reply", { correlation_id: "c-cli", message: "LGTM" }),
      tool("read_messages", {}),
      { text: "replied" },
    ]);
    const { reply } = await asking;
    expect(run.result, run.stderr).toMatchObject({ is_error: false, result: "replied" });
    expect(reply).toMatchObject({
      sender: "agent-1",
      type: MessageType.TASK_RESPONSE,
      payload: "LGTM",
      correlationId: "c-cli",
    });
    const [read, replied, empty] = toolResults(run);
    expect(read?.text).toMatch(/^1 message\(s\):/);
    expect(read?.text).toMatch(/from: agent-2\ntype: task_request\ncorrelation_id: c-cli/);
    expect(read?.text).toMatch(/please review PR 7$/);
    expect(replied?.text).toBe("Replied to agent-2 (correlation id c-cli).");
    expect(empty?.text).toBe("No messages are waiting."); // read_messages acknowledged it
  });
});

// No Broker behind the AgentHost (none started, or one that stopped): every tool answers at
// once with an error that says so in Conductor's words and how to start one, never a bare
// socket error, and never hangs.
describe("the Broker's MCP tools without a Broker", () => {
  it("explain every tool's failure", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "mcp-no-broker-"));
    try {
      const nowhere = path.join(dir, "broker.sock");
      const agent = await setUpAgentBroker({
        agentId: "agent-1",
        access: localBroker(randomBytes(32), nowhere),
      });
      expect(agent.registered).toBe(false);
      await using endpoint = await serveAgent(
        agent,
        "http://127.0.0.1:1",
        path.join(dir, "m.sock"),
      );
      const mcp = mcpClient(`${endpoint.url}/mcp`);
      const calls: [string, object][] = [
        ["send_message", { to: "agent-2", message: "hi" }],
        ["request", { to: "agent-2", message: "port?", timeout_seconds: 1 }],
        ["read_messages", {}],
        ["reply", { correlation_id: "c-1", message: "42" }],
        ["list_agents", {}],
      ];
      for (const [name, args] of calls) {
        const result = await mcp.tool(name, args);
        expect(result.isError, name).toBe(true);
        expect(result.text).toMatch(
          new RegExp(
            `^${name} failed: no Conductor Broker answers \\(cannot reach the Broker at ${nowhere}: `,
          ),
        );
        expect(result.text).toMatch(/`conductor broker`/);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
