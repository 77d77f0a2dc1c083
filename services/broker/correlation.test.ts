// Correlation ids through a real Broker on a Unix socket: a request's id is its requester's
// own. Only the agent asked can answer it; another agent reusing the id (before or after)
// opens a request of its own and never gets, nor blocks, the first one's answer.
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { MessageType, type Message } from "../../gen/conductor/v1/broker_pb.js";
import { failureOf } from "../../test/rpc-errors.ts";
import { startTestBroker, type TestBroker } from "./testing.ts";

type BrokerClient = ReturnType<TestBroker["agent"]>;

const ask = (receiver: string, payload: string, correlationId: string) => ({
  destination: { case: "receiver" as const, value: receiver },
  type: MessageType.TASK_REQUEST,
  payload,
  correlationId,
});

/** Reads (and acknowledges) what waits in a client's inbox, waiting up to `waitMs` for it. */
async function drain(client: BrokerClient, waitMs = 0): Promise<Message[]> {
  const { messages } = await client.receive({ maxMessages: 100, waitMs });
  if (messages.length > 0) await client.ack({ messageIds: messages.map((m) => m.id) });
  return messages;
}

const view = (messages: Message[]) =>
  messages.map((m) => [m.sender, MessageType[m.type], m.correlationId, m.payload]);

describe("Broker correlation ids", () => {
  it("lets only the agent asked answer a request, and only the requester take the answer", async () => {
    await using b = await startTestBroker();
    await b.register("agent-1", "agent-2", "agent-3");
    const asking = b.agent("agent-1").request({
      receiver: "agent-2",
      payload: "deploy?",
      correlationId: "job-1",
      timeoutMs: 10_000,
    });
    expect(view(await drain(b.agent("agent-2"), 10_000))).toEqual([
      ["agent-1", "TASK_REQUEST", "job-1", "deploy?"],
    ]);
    for (const requester of ["", "agent-1"]) {
      const stolen = await failureOf(
        b.agent("agent-3").reply({ correlationId: "job-1", payload: "no", requester }),
      );
      expect(stolen.code).toBe(Code.NotFound);
      expect(stolen.message).toMatch(/no open request.* "job-1" was sent to "agent-3"/);
    }
    // A forged answer sent as a plain message is not taken for the reply.
    await b.agent("agent-3").send({
      destination: { case: "receiver", value: "agent-1" },
      type: MessageType.TASK_RESPONSE,
      correlationId: "job-1",
      payload: "forged",
    });
    await b.agent("agent-2").reply({ correlationId: "job-1", payload: "yes" });
    const { reply } = await asking;
    expect(reply).toMatchObject({ sender: "agent-2", payload: "yes", correlationId: "job-1" });
    expect(view(await drain(b.agent("agent-1")))).toEqual([
      ["agent-3", "TASK_RESPONSE", "job-1", "forged"],
    ]);
  });

  it("keeps a request that reuses another's pending id from hijacking its answer", async () => {
    await using b = await startTestBroker();
    await b.register("agent-1", "agent-2", "agent-3");
    await b.agent("agent-1").send(ask("agent-2", "from 1", "job-2"));
    const hijack = b.agent("agent-3").request({
      receiver: "agent-2",
      payload: "from 3",
      correlationId: "job-2",
      timeoutMs: 10_000,
    });
    // agent-2 sees both requests, each with its sender.
    const seen: Message[] = [];
    while (seen.length < 2) seen.push(...(await drain(b.agent("agent-2"), 10_000)));
    expect(view(seen)).toEqual([
      ["agent-1", "TASK_REQUEST", "job-2", "from 1"],
      ["agent-3", "TASK_REQUEST", "job-2", "from 3"],
    ]);
    const ambiguous = await failureOf(
      b.agent("agent-2").reply({ correlationId: "job-2", payload: "a" }),
    );
    expect(ambiguous.code).toBe(Code.InvalidArgument);
    expect(ambiguous.message).toBe(
      `requests from "agent-1", "agent-3" carry correlation id "job-2": name the one you answer in requester (the request's sender)`,
    );
    const toOne = await b
      .agent("agent-2")
      .reply({ correlationId: "job-2", payload: "for 1", requester: "agent-1" });
    expect(toOne.receiver).toBe("agent-1");
    const again = await failureOf(
      b.agent("agent-2").reply({ correlationId: "job-2", payload: "x", requester: "agent-1" }),
    );
    expect(again.code).toBe(Code.FailedPrecondition);
    await b
      .agent("agent-2")
      .reply({ correlationId: "job-2", payload: "for 3", requester: "agent-3" });
    expect((await hijack).reply?.payload).toBe("for 3");
    expect(view(await drain(b.agent("agent-1")))).toEqual([
      ["agent-2", "TASK_RESPONSE", "job-2", "for 1"],
    ]);
    expect(await drain(b.agent("agent-3"))).toEqual([]);
  });

  it("lets an agent use an id another agent took first, with no one blocked or misanswered", async () => {
    await using b = await startTestBroker();
    await b.register("agent-1", "agent-2", "agent-3");
    // agent-3 squats an id it guesses agent-1 will use.
    await b.agent("agent-3").send(ask("agent-2", "squat", "job-3"));
    const asking = b
      .agent("agent-1")
      .request({ receiver: "agent-2", payload: "real", correlationId: "job-3", timeoutMs: 10_000 });
    const seen: Message[] = [];
    while (seen.length < 2) seen.push(...(await drain(b.agent("agent-2"), 10_000)));
    await b
      .agent("agent-2")
      .reply({ correlationId: "job-3", payload: "done", requester: "agent-1" });
    expect((await asking).reply).toMatchObject({ sender: "agent-2", payload: "done" });
    expect(await drain(b.agent("agent-3"))).toEqual([]);
    // A requester asking again with its own id waits for its own request's answer.
    const waiting = b.agent("agent-3").request({
      receiver: "agent-2",
      payload: "squat",
      correlationId: "job-3",
      timeoutMs: 10_000,
    });
    await b
      .agent("agent-2")
      .reply({ correlationId: "job-3", payload: "yours", requester: "agent-3" });
    expect((await waiting).reply?.payload).toBe("yours");
    expect(await drain(b.agent("agent-2"))).toEqual([]); // it was not sent twice
  });
});
