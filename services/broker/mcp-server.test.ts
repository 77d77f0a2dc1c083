// The MCP server: its protocol over stdio, then the REAL Claude Code CLI calling the Broker
// tools (scripted by the fake model) against a running Broker, through an agent's relay.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MessageType } from "../../gen/conductor/v1/broker_pb.js";
import { runClaude, type ClaudeRun } from "../../test/fake-model/cli.ts";
import { startFakeModel, type FakeModel } from "../../test/fake-model/server.ts";
import { MCP_ALLOWED_TOOLS, type AgentBroker } from "./access.ts";
import { startTestBroker, type TestBroker } from "./testing.ts";

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

/** A running MCP server spoken to directly as JSON-RPC over its stdio. */
function mcpProcess(argv: string[]) {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ["pipe", "pipe", "pipe"] });
  const waiting = new Map<unknown, (msg: Record<string, unknown>) => void>();
  createInterface({ input: child.stdout }).on("line", (line) => {
    const msg = JSON.parse(line) as Record<string, unknown>;
    waiting.get(msg.id)?.(msg);
  });
  let next = 0;
  return {
    call(method: string, params?: unknown): Promise<Record<string, unknown>> {
      const id = `req-${next++}`;
      return new Promise((resolve) => {
        waiting.set(id, resolve);
        child.stdin.write(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
      });
    },
    notify(method: string) {
      child.stdin.write(JSON.stringify({ jsonrpc: "2.0", method }) + "\n");
    },
    async close() {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.stdin.end();
      await exited;
    },
  };
}

describe("the Broker's MCP server", () => {
  let broker: TestBroker;
  let fake: FakeModel;
  let agent1: AgentBroker;

  beforeAll(async () => {
    broker = await startTestBroker();
    fake = await startFakeModel();
    await broker.register("agent-2");
    // agent-1's run folder, as an AgentHost prepares it: relay, credential, the script.
    agent1 = await broker.agentWay("agent-1");
  });
  afterAll(async () => {
    await agent1?.close();
    await fake?.close();
    await broker?.close();
  });

  /** Runs the real CLI as agent-1 with the Broker's tools. */
  const asAgent1 = (steps: unknown[], tools: string[] = []) =>
    runClaude({
      fakeUrl: fake.url,
      prompt: script(steps),
      args: [...agent1.cliArgs, "--allowedTools", [MCP_ALLOWED_TOOLS, ...tools].join(",")],
    });

  it("speaks MCP on stdio, from a folder with nothing but the script", async () => {
    expect(agent1.registered).toBe(true);
    const json = JSON.parse(agent1.cliArgs[1]!) as {
      mcpServers: { conductor: { command: string; args: string[] } };
    };
    const { command, args } = json.mcpServers.conductor;
    const mcp = mcpProcess([command, ...args]);
    try {
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
      const old = await mcp.call("initialize", { protocolVersion: "1999-01-01" });
      expect((old.result as { protocolVersion: string }).protocolVersion).toBe("2025-11-25");
      mcp.notify("notifications/initialized");
      const list = (await mcp.call("tools/list")).result as { tools: { name: string }[] };
      expect(list.tools.map((t) => t.name).sort()).toEqual([
        "list_agents",
        "read_messages",
        "reply",
        "request",
        "send_message",
      ]);
      const agents = (await mcp.call("tools/call", { name: "list_agents", arguments: {} }))
        .result as { content: { text: string }[] };
      expect(agents.content[0]?.text).toMatch(/- agent-1 \(you\): /);
      expect(agents.content[0]?.text).toMatch(/- agent-2: not connected, 0 waiting/);
      const bad = (
        await mcp.call("tools/call", { name: "send_message", arguments: { message: "x" } })
      ).result as { isError: boolean; content: { text: string }[] };
      expect(bad.isError).toBe(true);
      expect(bad.content[0]?.text).toMatch(/exactly one of "to" or "topic"/);
      // reply's `to` names the requester: the Broker answers only a request that agent made.
      const wrongAsker = (
        await mcp.call("tools/call", {
          name: "reply",
          arguments: { correlation_id: "c-x", to: "agent-2", message: "x" },
        })
      ).result as { isError: boolean; content: { text: string }[] };
      expect(wrongAsker.isError).toBe(true);
      expect(wrongAsker.content[0]?.text).toMatch(
        /not_found: no open request by "agent-2" with correlation id "c-x" was sent to "agent-1"/,
      );
      const unknown = await mcp.call("tools/call", { name: "nope", arguments: {} });
      expect(unknown.error).toMatchObject({ code: -32602 });
      expect((await mcp.call("ping")).result).toEqual({});
    } finally {
      await mcp.close();
    }
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
