// Peers that misbehave or vanish: none of them may end the Broker or an agent's MCP tools,
// wedge a call, or lose or store anything it should not.
import http2 from "node:http2";
import net from "node:net";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { eventually } from "../../test/harness.ts";
import { agentCredential } from "./access.ts";
import { mcpClient, startTestBroker, type AgentEndpoint, type TestBroker } from "./testing.ts";

/** Resolves with `p`, or with "no answer" once `ms` have passed (a bound, not a wait). */
function within<T>(p: Promise<T>, ms: number): Promise<T | "no answer"> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<"no answer">((r) => (timer = setTimeout(() => r("no answer"), ms)));
  return Promise.race([p, bound]).finally(() => clearTimeout(timer));
}

/** The bytes of a gRPC request frame: a 5-byte header and the message. */
function grpcFrame(message: Uint8Array): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt32BE(message.length, 1);
  return Buffer.concat([header, message]);
}

describe("the Broker with peers that fail", () => {
  let b: TestBroker;
  let agent: AgentEndpoint;

  beforeEach(async () => {
    b = await startTestBroker();
    await b.register("agent-1", "agent-2");
    agent = await b.agentEndpoint("agent-1", "http://127.0.0.1:1");
  });
  afterEach(async () => {
    await agent?.close();
    await b?.close();
  });

  it("answers an agent's waiting read_messages when the Broker restarts under it, and serves after", async () => {
    const mcp = mcpClient(`${agent.url}/mcp`);
    const reading = mcp.tool("read_messages", { wait_seconds: 120 });
    await eventually(async () => {
      const { agents } = await b.orchestrator().listAgents({});
      return agents.find((a) => a.id === "agent-1")?.connected || undefined;
    }, "agent-1's read_messages to wait in the Broker");
    await b.restart();
    const answer = await within(reading, 10_000);
    expect(answer).not.toBe("no answer");
    // The next call reaches the new Broker.
    await b.agent("agent-2").send({
      destination: { case: "receiver", value: "agent-1" },
      payload: "after the restart",
    });
    const again = await mcp.tool("read_messages", {});
    expect(again.isError).toBe(false);
    expect(again.text).toContain("after the restart");
  });

  it("answers an agent's tool calls with the reason while the Broker is down", async () => {
    const mcp = mcpClient(`${agent.url}/mcp`);
    await b.server.close();
    for (const [name, args] of [
      ["list_agents", {}],
      ["send_message", { to: "agent-2", message: "hello" }],
      ["read_messages", { wait_seconds: 5 }],
    ] as const) {
      const answer = await within(mcp.tool(name, args), 10_000);
      if (answer === "no answer") throw new Error(`${name} got no answer within 10 s`);
      expect(answer.isError).toBe(true);
      expect(answer.text).toMatch(
        new RegExp(`^${name} failed: no Conductor Broker answers \\(cannot reach the Broker at `),
      );
    }
  });

  it("stores nothing from a client that vanishes mid-message, and keeps serving", async () => {
    // A Send whose request frame is cut off half way, the connection then destroyed.
    const session = http2.connect("http://localhost", {
      createConnection: () => net.connect(b.socketPath),
    });
    session.on("error", () => {});
    const stream = session.request({
      ":method": "POST",
      ":path": "/conductor.v1.BrokerService/Send",
      "content-type": "application/grpc",
      te: "trailers",
      authorization: `Bearer ${agentCredential(b.secret, "agent-1")}`,
    });
    stream.on("error", () => {});
    const frame = grpcFrame(new Uint8Array(200).fill(0x41));
    await new Promise<void>((resolve) => stream.write(frame.subarray(0, 60), () => resolve()));
    session.socket.destroy();
    // A client that is not HTTP/2 at all, straight to the Broker's socket.
    const raw = net.connect(b.socketPath);
    raw.on("error", () => {});
    await new Promise<void>((resolve) => raw.once("connect", () => resolve()));
    raw.end("GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage");

    await b.agent("agent-2").send({
      destination: { case: "receiver", value: "agent-1" },
      payload: "still here",
    });
    const { messages } = await b.agent("agent-1").receive({});
    expect(messages.map((m) => [m.sender, m.payload])).toEqual([["agent-2", "still here"]]);
  });

  it("offers a stream's messages again when its peer resets it mid-delivery", async () => {
    for (let i = 0; i < 3; i++) {
      await b.agent("agent-2").send({
        destination: { case: "receiver", value: "agent-1" },
        payload: `m${i}`,
      });
    }
    const reset = new AbortController();
    const got: string[] = [];
    try {
      for await (const res of b.agent("agent-1").subscribe({}, { signal: reset.signal })) {
        got.push(res.message!.payload);
        if (got.length === 1) reset.abort(); // RST_STREAM while more are on their way
      }
    } catch {
      // the aborted stream ends with CANCELED on this side
    }
    expect(got[0]).toBe("m0");
    const { messages } = await b.agent("agent-1").receive({});
    expect(messages.map((m) => m.payload)).toEqual(["m0", "m1", "m2"]);
  });

  it("frees a Request's correlation id when its caller cancels the wait, and keeps the late reply", async () => {
    const cancel = new AbortController();
    const asking = b
      .agent("agent-1")
      .request(
        { receiver: "agent-2", payload: "q", correlationId: "c-1", timeoutMs: 60_000 },
        { signal: cancel.signal },
      );
    const { messages } = await b.agent("agent-2").receive({ waitMs: 10_000 });
    expect(messages.map((m) => m.correlationId)).toEqual(["c-1"]);
    cancel.abort();
    await expect(asking).rejects.toThrow();
    await eventually(async () => {
      const { agents } = await b.orchestrator().listAgents({});
      return agents.find((a) => a.id === "agent-1")?.connected === false || undefined;
    }, "the Broker to see the Request cancelled");
    await b.agent("agent-2").reply({ correlationId: "c-1", payload: "late answer" });
    // Asking again with the same id is not "already waiting", and gets the answer kept for it.
    const again = await b
      .agent("agent-1")
      .request({ receiver: "agent-2", payload: "q", correlationId: "c-1", timeoutMs: 10_000 });
    expect(again.reply?.payload).toBe("late answer");
  });
});
