// The Broker's Prometheus metrics, fed by a real Broker.
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { MessageType } from "../../gen/conductor/v1/broker_pb.js";
import { startTestBroker } from "./testing.ts";

describe("broker metrics", () => {
  it("counts stored, delivered, acknowledged and waiting messages", async () => {
    const registry = new Registry();
    await using b = await startTestBroker({ registry });
    await b.orchestrator().registerAgent({ agentId: "a", topics: ["t"] });
    await b.orchestrator().registerAgent({ agentId: "b", topics: ["t"] });
    await b.agent("a").send({
      destination: { case: "receiver", value: "b" },
      type: MessageType.STATUS_UPDATE,
      payload: "1",
    });
    await b.orchestrator().send({ destination: { case: "topic", value: "t" }, payload: "2" });
    const { messages } = await b.agent("b").receive({});
    await b.agent("b").ack({ messageIds: messages.map((m) => m.id) });
    const text = await registry.metrics();
    expect(text).toContain('conductor_broker_messages_stored_total{type="status_update"} 1');
    expect(text).toContain('conductor_broker_messages_stored_total{type="coordination"} 2');
    expect(text).toContain('conductor_broker_deliveries_total{attempt="first"} 2');
    expect(text).toContain("conductor_broker_messages_acked_total 2");
    expect(text).toContain("conductor_broker_messages_waiting 1"); // a's copy of the topic message
  });
});
