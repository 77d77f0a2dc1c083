// Delivery through a real Broker on a Unix socket with real clients: durability across a
// restart, redelivery without an ack, per-sender order, topics, request/reply, expiry.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { MessageType, SendRequestSchema, type Message } from "../../gen/conductor/v1/broker_pb.js";
import { MAX_READERS } from "./mailroom.ts";
import { startTestBroker, type TestBroker } from "./testing.ts";
import { failureOf } from "../../test/rpc-errors.ts";

const to = (
  receiver: string,
  payload: string,
  more: { ttlSeconds?: number; type?: MessageType; correlationId?: string } = {},
) =>
  create(SendRequestSchema, {
    destination: { case: "receiver", value: receiver },
    payload,
    ...more,
  });

/** Reads the whole inbox of `id` with Receive, acknowledging as it goes. */
async function drain(b: TestBroker, id: string, ack = true): Promise<Message[]> {
  const all: Message[] = [];
  for (let i = 0; i < 1000; i++) {
    const { messages } = await b.agent(id).receive({ maxMessages: 100 });
    if (messages.length === 0) return all;
    all.push(...messages);
    if (ack) await b.agent(id).ack({ messageIds: messages.map((m) => m.id) });
  }
  throw new Error("inbox did not drain");
}

describe("Broker delivery", () => {
  let b: TestBroker | undefined;
  afterEach(async () => {
    await b?.close();
    b = undefined;
  });

  it("stores before answering, delivers, and an ack removes the message", async () => {
    b = await startTestBroker();
    await b.register("a", "b");
    const sent = await b.agent("a").send(to("b", "hello"));
    expect(sent.deliveredTo).toBe(1);
    const { messages } = await b.agent("b").receive({});
    expect(messages).toHaveLength(1);
    expect(messages[0]).toMatchObject({
      id: sent.messageId,
      sender: "a",
      receiver: "b",
      payload: "hello",
      type: MessageType.COORDINATION,
      deliveryCount: 1,
    });
    expect((await b.agent("b").ack({ messageIds: [sent.messageId] })).acked).toBe(1);
    expect((await b.agent("b").ack({ messageIds: [sent.messageId] })).acked).toBe(0);
    expect((await b.agent("b").receive({})).messages).toEqual([]);
  });

  it("makes an agent whose first call is a send known, across a restart", async () => {
    b = await startTestBroker();
    await b.register("b");
    await b.agent("newcomer").send(to("b", "hello"));
    await b.restart();
    await b.agent("b").send(to("newcomer", "welcome"));
    const { messages } = await b.agent("newcomer").receive({});
    expect(messages.map((m) => [m.sender, m.payload])).toEqual([["b", "welcome"]]);
  });

  it("delivers again when no ack comes within the ack timeout", async () => {
    b = await startTestBroker({ ackTimeoutMs: 200 });
    await b.register("a", "b");
    const sent = await b.agent("a").send(to("b", "again"));
    const abort = new AbortController();
    const seen: Message[] = [];
    for await (const { message } of b.agent("b").subscribe({}, { signal: abort.signal })) {
      seen.push(message!);
      if (seen.length === 2) break; // the first is never acknowledged
    }
    abort.abort();
    expect(seen.map((m) => [m.id, m.deliveryCount])).toEqual([
      [sent.messageId, 1],
      [sent.messageId, 2],
    ]);
    await b.agent("b").ack({ messageIds: [sent.messageId] });
    expect((await b.agent("b").receive({})).messages).toEqual([]);
  });

  it("offers what a closed stream did not acknowledge to the next reader at once", async () => {
    b = await startTestBroker();
    await b.register("a", "b");
    await b.agent("a").send(to("b", "one"));
    await b.agent("a").send(to("b", "two"));
    const abort = new AbortController();
    for await (const { message } of b.agent("b").subscribe({}, { signal: abort.signal })) {
      expect(message?.payload).toBe("one");
      break;
    }
    abort.abort();
    // Unacknowledged and leased for 30 s, yet free again because the stream ended.
    const again = await b.agent("b").receive({ waitMs: 5000 });
    expect(again.messages.map((m) => m.payload)).toEqual(["one", "two"]);
  });

  it("keeps each sender's order under 1,000 interleaved sends from four senders", async () => {
    b = await startTestBroker();
    const senders = ["s1", "s2", "s3", "s4"];
    await b.register("r", ...senders);
    const abort = new AbortController();
    const received: Message[] = [];
    const reading = (async () => {
      for await (const { message } of b
        .agent("r")
        .subscribe({ prefetch: 50 }, { signal: abort.signal })) {
        received.push(message!);
        await b.agent("r").ack({ messageIds: [message!.id] });
        if (received.length === 1000) return;
      }
    })();
    await Promise.all(
      senders.map(async (s) => {
        for (let i = 0; i < 250; i++) await b!.agent(s).send(to("r", `${s}:${i}`));
      }),
    );
    await reading;
    abort.abort();
    expect(new Set(received.map((m) => m.id)).size).toBe(1000);
    for (const s of senders) {
      const seq = received
        .filter((m) => m.sender === s)
        .map((m) => Number(m.payload.split(":")[1]));
      expect(seq).toEqual([...Array(250).keys()]);
    }
    // The senders really interleaved: the receiver did not see them one block after another.
    const switches = received.filter((m, i) => i > 0 && received[i - 1]!.sender !== m.sender);
    expect(switches.length).toBeGreaterThan(3);
  });

  it("after a restart delivers everything not acknowledged, and nothing acknowledged", async () => {
    b = await startTestBroker({ ackTimeoutMs: 60_000 });
    await b.register("a", "b");
    const ids: string[] = [];
    for (let i = 0; i < 100; i++) ids.push((await b.agent("a").send(to("b", `m${i}`))).messageId);
    const first = await b.agent("b").receive({ maxMessages: 40 });
    expect((await b.agent("b").ack({ messageIds: first.messages.map((m) => m.id) })).acked).toBe(
      40,
    );
    // Delivered but not acknowledged when the Broker goes down.
    const leased = await b.agent("b").receive({ maxMessages: 20 });
    expect(leased.messages).toHaveLength(20);

    await b.restart();

    const after = await drain(b, "b");
    expect(after.map((m) => m.id)).toEqual(ids.slice(40));
    expect(after.map((m) => m.payload)).toEqual(ids.slice(40).map((_, i) => `m${i + 40}`));
    const ackedBefore = new Set(first.messages.map((m) => m.id));
    expect(after.filter((m) => ackedBefore.has(m.id))).toEqual([]);
    // Registrations and sending still work after the restart.
    await b.agent("a").send(to("b", "later"));
    expect((await drain(b, "b")).map((m) => m.payload)).toEqual(["later"]);
  });

  it("fans a topic message out to every member but the sender, durably", async () => {
    b = await startTestBroker();
    await b.orchestrator().registerAgent({ agentId: "a", topics: ["group-1"] });
    await b.orchestrator().registerAgent({ agentId: "b", topics: ["group-1"] });
    await b.orchestrator().registerAgent({ agentId: "c", topics: ["group-1"] });
    const sent = await b.agent("a").send({
      destination: { case: "topic", value: "group-1" },
      type: MessageType.STATUS_UPDATE,
      payload: "half done",
    });
    expect(sent.deliveredTo).toBe(2);
    const fromOrch = await b.orchestrator().send({
      destination: { case: "topic", value: "group-1" },
      payload: "all stop",
    });
    expect(fromOrch.deliveredTo).toBe(3);
    await b.restart();
    for (const id of ["b", "c"]) {
      const got = await drain(b, id);
      expect(got.map((m) => [m.sender, m.topic, m.payload, m.receiver])).toEqual([
        ["a", "group-1", "half done", id],
        ["orchestrator", "group-1", "all stop", id],
      ]);
    }
    expect((await drain(b, "a")).map((m) => m.payload)).toEqual(["all stop"]);
    const { agents } = await b.agent("a").listAgents({});
    expect(agents.find((x) => x.id === "c")?.topics).toEqual(["group-1"]);
    await b.agent("c").unsubscribe({ topics: ["group-1"] });
    const last = await b.orchestrator().send({
      destination: { case: "topic", value: "group-1" },
      payload: "x",
    });
    expect(last.deliveredTo).toBe(2);
  });

  it("answers a Request with the reply carrying its correlation id", async () => {
    b = await startTestBroker();
    await b.register("asker", "worker");
    const abort = new AbortController();
    const working = (async () => {
      for await (const { message } of b.agent("worker").subscribe({}, { signal: abort.signal })) {
        expect(message?.type).toBe(MessageType.TASK_REQUEST);
        await b.agent("worker").reply({
          correlationId: message!.correlationId,
          payload: `done: ${message!.payload}`,
        });
        await b.agent("worker").ack({ messageIds: [message!.id] });
        return message!;
      }
      throw new Error("the stream ended before a request came");
    })();
    const res = await b.agent("asker").request({ receiver: "worker", payload: "build it" });
    const request = await working;
    abort.abort();
    expect(res.reply).toMatchObject({
      sender: "worker",
      receiver: "asker",
      type: MessageType.TASK_RESPONSE,
      payload: "done: build it",
      correlationId: request.correlationId,
    });
    expect(res.correlationId).toBe(request.correlationId);
    // The reply was acknowledged by Request; a second answer is refused.
    expect((await b.agent("asker").receive({})).messages).toEqual([]);
    const again = await failureOf(
      b.agent("worker").reply({ correlationId: request.correlationId, payload: "twice" }),
    );
    expect(again.code).toBe(Code.FailedPrecondition);
    expect(again.message).toMatch(/answered already/);
  });

  it("times a Request out with DEADLINE_EXCEEDED; the late reply waits in the inbox", async () => {
    b = await startTestBroker();
    await b.register("asker", "slow");
    const timedOut = await failureOf(
      b
        .agent("asker")
        .request({ receiver: "slow", payload: "q", correlationId: "c-1", timeoutMs: 100 }),
    );
    expect(timedOut.code).toBe(Code.DeadlineExceeded);
    expect(timedOut.message).toMatch(/"slow" did not reply within 0.1 s/);
    const { messages } = await b.agent("slow").receive({});
    expect(messages.map((m) => [m.correlationId, m.type])).toEqual([
      ["c-1", MessageType.TASK_REQUEST],
    ]);
    await b.agent("slow").reply({ correlationId: "c-1", payload: "late answer" });
    const late = await b.agent("asker").receive({});
    expect(late.messages.map((m) => [m.sender, m.payload, m.correlationId])).toEqual([
      ["slow", "late answer", "c-1"],
    ]);
    await b.agent("asker").ack({ messageIds: late.messages.map((m) => m.id) });

    // Asking again with the id of an unanswered request waits for it, without a second copy.
    const ask = { receiver: "slow", payload: "q2", correlationId: "c-2" };
    expect((await failureOf(b.agent("asker").request({ ...ask, timeoutMs: 50 }))).code).toBe(
      Code.DeadlineExceeded,
    );
    const again = b.agent("asker").request({ ...ask, timeoutMs: 10_000 });
    const pending = await b.agent("slow").receive({ maxMessages: 10 });
    expect(pending.messages.map((m) => m.correlationId)).toEqual(["c-2"]); // c-1 is leased
    await b.agent("slow").reply({ correlationId: "c-2", payload: "answer 2" });
    expect((await again).reply?.payload).toBe("answer 2");
  });

  it("drops messages nobody acknowledged once their TTL has passed", async () => {
    let now = Date.now();
    b = await startTestBroker({ ttlMs: 60_000, clock: () => now });
    await b.register("a", "b");
    await b.agent("a").send(to("b", "short", { ttlSeconds: 5 }));
    await b.agent("a").send(to("b", "long"));
    const tooLong = await failureOf(b.agent("a").send(to("b", "x", { ttlSeconds: 61 })));
    expect(tooLong.code).toBe(Code.InvalidArgument);
    expect(tooLong.message).toMatch(/over the Broker's limit of 60 \(broker.ttl_seconds\)/);
    now += 6_000;
    expect(await b.server.broker.sweep()).toBe(1);
    expect((await drain(b, "b", false)).map((m) => m.payload)).toEqual(["long"]);
    now += 60_000;
    expect((await b.agent("b").receive({})).messages).toEqual([]);
    await b.restart();
    expect((await b.agent("b").receive({})).messages).toEqual([]);
  });

  it("bounds the readers of one inbox: the one over MAX_READERS is RESOURCE_EXHAUSTED, others unaffected", async () => {
    b = await startTestBroker();
    await b.register("a", "b", "c");
    const abort = new AbortController();
    const waiting = Array.from({ length: MAX_READERS }, () =>
      b!
        .agent("b")
        .receive({ waitMs: 60_000 }, { signal: abort.signal })
        .catch(() => undefined),
    );
    try {
      // Once every one of them waits, the next reader of "b" is refused, whatever its kind.
      let refused: { code: Code; message: string } | undefined;
      for (let i = 0; i < 200 && !refused; i++) {
        try {
          await b.agent("b").receive({ waitMs: 0 });
          await new Promise((resolve) => setTimeout(resolve, 50));
        } catch (e) {
          const err = ConnectError.from(e);
          refused = { code: err.code, message: err.rawMessage };
        }
      }
      expect(refused?.code).toBe(Code.ResourceExhausted);
      expect(refused?.message).toMatch(/"b" already has 64 readers at once/);
      const stream = b.agent("b").subscribe({}, { signal: abort.signal });
      expect(
        (
          await failureOf(
            (async () => {
              for await (const _ of stream) break;
            })(),
          )
        ).code,
      ).toBe(Code.ResourceExhausted);
      expect((await b.agent("c").receive({ waitMs: 0 })).messages).toEqual([]);
      // A message ends one wait: its place is free again.
      await b.agent("a").send(to("b", "hello"));
      await expect(b.agent("b").receive({ waitMs: 0 })).resolves.toBeDefined();
    } finally {
      abort.abort();
      await Promise.all(waiting);
    }
  });
});
