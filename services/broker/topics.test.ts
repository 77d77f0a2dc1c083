// Topic membership through a real Broker on a Unix socket: only the Orchestrator makes an
// agent a member, only members receive a topic's messages, only members (and the
// Orchestrator) send to it; an agent may leave. Refusals are PERMISSION_DENIED and change
// nothing.
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import type { Message } from "../../gen/conductor/v1/broker_pb.js";
import { failureOf } from "../../test/rpc-errors.ts";
import { startTestBroker, type TestBroker } from "./testing.ts";

const toTopic = (topic: string, payload: string) => ({
  destination: { case: "topic" as const, value: topic },
  payload,
});

type BrokerClient = ReturnType<TestBroker["agent"]>;

/** Reads (and acknowledges) what waits in a client's inbox. */
async function drain(client: BrokerClient): Promise<Message[]> {
  const { messages } = await client.receive({ maxMessages: 100 });
  if (messages.length > 0) await client.ack({ messageIds: messages.map((m) => m.id) });
  return messages;
}

/** Each agent's topics, as ListAgents shows them. */
async function topicsOf(b: TestBroker): Promise<Record<string, string[]>> {
  const { agents } = await b.orchestrator().listAgents({});
  return Object.fromEntries(agents.map((a) => [a.id, a.topics]));
}

describe("Broker topic membership", () => {
  it("refuses an agent that reads or sends to a topic it was never put in", async () => {
    await using b = await startTestBroker();
    await b.register("agent-1");
    for (const agentId of ["agent-2", "agent-3"]) {
      await b.orchestrator().registerAgent({ agentId, topics: ["group-9"] });
    }
    const a1 = b.agent("agent-1");
    const denied: Promise<unknown>[] = [
      a1.receive({ topics: ["group-9"] }),
      a1.receive({ topics: ["other", "group-9"], waitMs: 1000 }),
      (async () => {
        for await (const _ of a1.subscribe({ topics: ["group-9"] })) break;
      })(),
    ];
    for (const call of denied) {
      const got = await failureOf(call);
      expect(got.code, got.message).toBe(Code.PermissionDenied);
      expect(got.message).toMatch(
        /^"agent-1" is not a member of topic "(group-9|other)": only the Orchestrator makes agents members of topics \(RegisterAgent\)/,
      );
    }
    const send = await failureOf(a1.send(toTopic("group-9", "let me in")));
    expect(send.code).toBe(Code.PermissionDenied);
    expect(send.message).toBe(
      `"agent-1" may not send to topic "group-9": only its members and the Orchestrator may, and only the Orchestrator makes agents members (RegisterAgent)`,
    );
    // Nothing changed: agent-1 is in no topic and gets none of the group's traffic.
    expect(await topicsOf(b)).toMatchObject({
      "agent-1": [],
      "agent-2": ["group-9"],
      "agent-3": ["group-9"],
    });
    await b.agent("agent-2").send(toTopic("group-9", "members only"));
    expect((await b.orchestrator().send(toTopic("group-9", "all hands"))).deliveredTo).toBe(2);
    expect(await drain(a1)).toEqual([]);
    expect((await drain(b.agent("agent-3"))).map((m) => [m.sender, m.topic, m.payload])).toEqual([
      ["agent-2", "group-9", "members only"],
      ["orchestrator", "group-9", "all hands"],
    ]);
    // A member may name its own topic.
    expect((await b.agent("agent-2").receive({ topics: ["group-9"] })).messages).toHaveLength(1);
  });

  it("lets an agent leave a topic but not come back by itself, nor take out others", async () => {
    await using b = await startTestBroker();
    for (const agentId of ["agent-1", "agent-2", "agent-3"]) {
      await b.orchestrator().registerAgent({ agentId, topics: ["group-9"] });
    }
    await b.agent("agent-2").unsubscribe({ topics: ["group-9"] });
    expect((await b.agent("agent-1").send(toTopic("group-9", "after leaving"))).deliveredTo).toBe(
      1,
    );
    for (const call of [
      b.agent("agent-2").receive({ topics: ["group-9"] }),
      b.agent("agent-2").send(toTopic("group-9", "still here?")),
    ]) {
      expect((await failureOf(call)).code).toBe(Code.PermissionDenied);
    }
    const kick = await failureOf(
      b.agent("agent-1").unsubscribe({ topics: ["group-9"], agentId: "agent-3" }),
    );
    expect(kick.code).toBe(Code.PermissionDenied);
    expect(kick.message).toMatch(/"agent-1" may not take "agent-3" out of topics/);
    expect((await topicsOf(b))["agent-3"]).toEqual(["group-9"]);

    // The Orchestrator takes agent-3 out and puts agent-2 back; that lasts across a restart.
    await b.orchestrator().unsubscribe({ topics: ["group-9"], agentId: "agent-3" });
    await b.orchestrator().registerAgent({ agentId: "agent-2", topics: ["group-9"] });
    await b.restart();
    expect(await topicsOf(b)).toMatchObject({
      "agent-1": ["group-9"],
      "agent-2": ["group-9"],
      "agent-3": [],
    });
    expect((await b.agent("agent-1").send(toTopic("group-9", "welcome back"))).deliveredTo).toBe(1);
    expect((await drain(b.agent("agent-2"))).map((m) => m.payload)).toEqual(["welcome back"]);
    // agent-3 has what came while it was a member, and nothing since.
    expect((await drain(b.agent("agent-3"))).map((m) => m.payload)).toEqual(["after leaving"]);
  });

  it("lets the Orchestrator join a topic by naming it, and send to any topic", async () => {
    await using b = await startTestBroker();
    await b.orchestrator().registerAgent({ agentId: "agent-1", topics: ["ops"] });
    await b.orchestrator().receive({ topics: ["ops"] });
    await b.agent("agent-1").send(toTopic("ops", "deployed"));
    expect((await drain(b.orchestrator())).map((m) => [m.sender, m.payload])).toEqual([
      ["agent-1", "deployed"],
    ]);
    expect((await b.orchestrator().send(toTopic("nobody-here", "x"))).deliveredTo).toBe(0);
  });
});
