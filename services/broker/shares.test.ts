// No sender can silence others by filling an inbox: through a real Broker on a Unix socket,
// one agent's share of another's inbox is bounded (broker.sender_share), agents together
// fill only part of it, and replies and the Orchestrator's messages use the places kept for
// them (broker.reply_reserve) up to broker.inbox_limit. Every refusal stores nothing.
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { MessageType, type Message } from "../../gen/conductor/v1/broker_pb.js";
import { failureOf } from "../../test/rpc-errors.ts";
import { loadConfig, ConfigError } from "../shared/config.ts";
import { silentLogger } from "../shared/log.ts";
import { brokerOptions } from "./serve.ts";
import { startTestBroker, type TestBroker } from "./testing.ts";

const to = (receiver: string, payload: string, ttlSeconds = 0) => ({
  destination: { case: "receiver" as const, value: receiver },
  payload,
  ttlSeconds,
});
const toTopic = (topic: string, payload: string) => ({
  destination: { case: "topic" as const, value: topic },
  payload,
});

type BrokerClient = ReturnType<TestBroker["agent"]>;

/** Reads (and acknowledges) the whole inbox of a client's identity. */
async function drain(client: BrokerClient): Promise<Message[]> {
  const all: Message[] = [];
  for (;;) {
    const { messages } = await client.receive({ maxMessages: 100 });
    if (messages.length === 0) return all;
    all.push(...messages);
    await client.ack({ messageIds: messages.map((m) => m.id) });
  }
}

/** Waits for the next task_request in a client's inbox (other messages stay leased). */
async function nextRequest(client: BrokerClient): Promise<Message> {
  for (;;) {
    const { messages } = await client.receive({ maxMessages: 100, waitMs: 10_000 });
    if (messages.length === 0) throw new Error("no task_request came within 10 s");
    const request = messages.find((m) => m.type === MessageType.TASK_REQUEST);
    if (request) return request;
  }
}

/** How many messages of each sender. */
const bySender = (messages: Message[]) =>
  Object.fromEntries(
    [...new Set(messages.map((m) => m.sender))].map((s) => [
      s,
      messages.filter((m) => m.sender === s).length,
    ]),
  );

/** Sends `count` messages at once; returns how many were stored and the refusals. */
async function flood(send: (i: number) => Promise<unknown>, count: number) {
  const results = await Promise.allSettled(Array.from({ length: count }, (_, i) => send(i)));
  const refused = results.flatMap((r) => {
    if (r.status === "fulfilled") return [];
    const e = ConnectError.from(r.reason);
    return [{ code: e.code, message: e.rawMessage }];
  });
  return { stored: count - refused.length, refused };
}

describe("Broker inbox shares", () => {
  it("keeps agent-1, flooding agent-2 with 1,000 messages, from silencing anyone else", async () => {
    // Production defaults: inbox_limit 1000, so a share of 100 and 100 places kept.
    await using b = await startTestBroker({
      inboxLimit: 1000,
      senderShare: 100,
      replyReserve: 100,
    });
    const orch = b.orchestrator();
    await b.register("agent-1");
    for (const agentId of ["agent-2", "agent-3"]) {
      await orch.registerAgent({ agentId, topics: ["group-9"] });
    }
    const { stored, refused } = await flood(
      (i) => b.agent("agent-1").send(to("agent-2", `spam ${i}`)),
      1000,
    );
    expect(stored).toBe(100);
    expect(new Set(refused.map((r) => r.code))).toEqual(new Set([Code.ResourceExhausted]));
    expect(refused[0]?.message).toBe(
      `"agent-1" already has 100 unacknowledged messages in the inbox of "agent-2", its whole share (broker.sender_share); nothing was sent: wait until "agent-2" has read some, or ask an operator to raise broker.sender_share`,
    );

    // The Orchestrator, a topic broadcast, another agent, and a reply all still get through.
    await orch.send(to("agent-2", "from the orchestrator"));
    expect((await orch.send(toTopic("group-9", "to the group"))).deliveredTo).toBe(2);
    await b.agent("agent-3").send(to("agent-2", "from agent-3"));
    expect(
      (await b.agent("agent-3").send(toTopic("group-9", "agent-3 to the group"))).deliveredTo,
    ).toBe(1);
    const asking = b
      .agent("agent-2")
      .request({ receiver: "agent-3", payload: "q", timeoutMs: 10_000 });
    const request = await nextRequest(b.agent("agent-3"));
    await b.agent("agent-3").reply({ correlationId: request.correlationId, payload: "answer" });
    expect((await asking).reply?.payload).toBe("answer");

    const inbox = await drain(b.agent("agent-2"));
    expect(bySender(inbox)).toEqual({ "agent-1": 100, orchestrator: 2, "agent-3": 2 });
    // Once agent-2 has read them, agent-1 has its share again, and no more.
    const again = await flood((i) => b.agent("agent-1").send(to("agent-2", `again ${i}`)), 150);
    expect(again.stored).toBe(100);
  });

  it("keeps the orchestrator's inbox open to others when one agent floods it", async () => {
    await using b = await startTestBroker({
      inboxLimit: 1000,
      senderShare: 100,
      replyReserve: 100,
    });
    const orch = b.orchestrator();
    await b.register("agent-1", "agent-3");
    const { stored, refused } = await flood(
      (i) => b.agent("agent-1").send(to("orchestrator", `spam ${i}`)),
      1000,
    );
    expect(stored).toBe(100);
    expect(refused[0]?.message).toMatch(
      /"agent-1" already has 100 .* "orchestrator".*broker.sender_share/,
    );

    await b.agent("agent-3").send(to("orchestrator", "status: done"));
    const asking = orch.request({ receiver: "agent-3", payload: "how far?", timeoutMs: 10_000 });
    const request = await nextRequest(b.agent("agent-3"));
    await b.agent("agent-3").reply({ correlationId: request.correlationId, payload: "90%" });
    expect((await asking).reply).toMatchObject({ sender: "agent-3", payload: "90%" });
    expect(bySender(await drain(b.orchestrator()))).toEqual({ "agent-1": 100, "agent-3": 1 });
  });

  it("bounds a flood of a topic by the flooder's share of each member's inbox", async () => {
    await using b = await startTestBroker({ inboxLimit: 50, senderShare: 5, replyReserve: 5 });
    for (const agentId of ["t1", "t2", "t3"]) {
      await b.orchestrator().registerAgent({ agentId, topics: ["group-9"] });
    }
    const { stored, refused } = await flood(
      (i) => b.agent("t1").send(toTopic("group-9", `flood ${i}`)),
      100,
    );
    expect(stored).toBe(5);
    expect(refused[0]?.code).toBe(Code.ResourceExhausted);
    expect(refused[0]?.message).toMatch(/"t1" already has 5 .*broker.sender_share/);
    // Another member and the Orchestrator still reach everyone.
    expect((await b.agent("t3").send(toTopic("group-9", "from t3"))).deliveredTo).toBe(2);
    expect((await b.orchestrator().send(toTopic("group-9", "all stop"))).deliveredTo).toBe(3);
    for (const id of ["t2", "t3"]) {
      const got = bySender(await drain(b.agent(id)));
      expect(got).toEqual(
        id === "t2" ? { t1: 5, t3: 1, orchestrator: 1 } : { t1: 5, orchestrator: 1 },
      );
    }
  });

  it("lets agents together fill only their part; replies and the Orchestrator take the rest, up to inbox_limit", async () => {
    // 10 places: 4 kept for replies and the Orchestrator, so agents fill 6, 3 each at most.
    await using b = await startTestBroker({ inboxLimit: 10, senderShare: 3, replyReserve: 4 });
    await b.register("r", "s1", "s2", "s3");
    for (const s of ["s1", "s2"]) {
      for (let i = 0; i < 3; i++) await b.agent(s).send(to("r", `${s}:${i}`));
    }
    const s3 = await failureOf(b.agent("s3").send(to("r", "s3:0")));
    expect(s3.code).toBe(Code.ResourceExhausted);
    expect(s3.message).toBe(
      `the inbox of "r" holds 6 unacknowledged messages from agents, all they may fill (broker.inbox_limit - broker.reply_reserve; the rest is kept for replies and the Orchestrator); nothing was sent, try again once it has read some`,
    );
    for (let i = 0; i < 3; i++) await b.orchestrator().send(to("r", `o:${i}`));
    // r asked s3 something; its answer uses the last place.
    const asked = await b.agent("r").send({ ...to("s3", "q1"), type: MessageType.TASK_REQUEST });
    await b.agent("s3").reply({ correlationId: asked.correlationId, payload: "a1" });
    // Now the inbox is at its limit: even the Orchestrator and replies wait.
    const orch = await failureOf(b.orchestrator().send(to("r", "o:3")));
    expect(orch.code).toBe(Code.ResourceExhausted);
    expect(orch.message).toMatch(/the inbox of "r" is full: 10 messages .*\(broker.inbox_limit\)/);
    const asked2 = await b.agent("r").send({ ...to("s3", "q2"), type: MessageType.TASK_REQUEST });
    const late = await failureOf(
      b.agent("s3").reply({ correlationId: asked2.correlationId, payload: "a2" }),
    );
    expect(late.code).toBe(Code.ResourceExhausted);

    const inbox = await drain(b.agent("r"));
    expect(inbox.map((m) => m.payload)).toEqual([
      "s1:0",
      "s1:1",
      "s1:2",
      "s2:0",
      "s2:1",
      "s2:2",
      "o:0",
      "o:1",
      "o:2",
      "a1",
    ]);
    // The refused reply was not counted as given: it can be sent now that r has room.
    await b.agent("s3").reply({ correlationId: asked2.correlationId, payload: "a2" });
    expect((await drain(b.agent("r"))).map((m) => [m.sender, m.type, m.payload])).toEqual([
      ["s3", MessageType.TASK_RESPONSE, "a2"],
    ]);
  });

  it("counts shares from what is stored after a restart, replies still apart", async () => {
    await using b = await startTestBroker({ inboxLimit: 10, senderShare: 1, replyReserve: 1 });
    await b.register("agent-1", "agent-2", "agent-3");
    await b.agent("agent-1").send(to("agent-2", "one"));
    const asked = await b
      .agent("agent-2")
      .send({ ...to("agent-3", "q"), type: MessageType.TASK_REQUEST });
    await b.agent("agent-3").reply({ correlationId: asked.correlationId, payload: "a" });

    await b.restart();

    const refused = await failureOf(b.agent("agent-1").send(to("agent-2", "two")));
    expect(refused.code).toBe(Code.ResourceExhausted);
    expect(refused.message).toMatch(/broker.sender_share/);
    // agent-3's reply does not use its share: it may still send agent-2 a message of its own.
    await b.agent("agent-3").send(to("agent-2", "hello"));
    expect((await drain(b.agent("agent-2"))).map((m) => [m.sender, m.payload])).toEqual([
      ["agent-1", "one"],
      ["agent-3", "a"],
      ["agent-3", "hello"],
    ]);
  });

  it("gives a sender its share back as its messages expire", async () => {
    let now = Date.now();
    await using b = await startTestBroker({
      inboxLimit: 20,
      senderShare: 2,
      replyReserve: 2,
      ttlMs: 60_000,
      clock: () => now,
    });
    await b.register("agent-1", "agent-2");
    for (const p of ["a", "b"]) await b.agent("agent-1").send(to("agent-2", p, 5));
    expect((await failureOf(b.agent("agent-1").send(to("agent-2", "c")))).code).toBe(
      Code.ResourceExhausted,
    );
    now += 6_000;
    await b.agent("agent-1").send(to("agent-2", "c"));
    expect((await drain(b.agent("agent-2"))).map((m) => m.payload)).toEqual(["c"]);
  });
});

describe("broker.sender_share and broker.reply_reserve", () => {
  const broker = (env: Record<string, string>) =>
    brokerOptions(loadConfig({ env, cwd: "/" }), silentLogger);

  it("default to a tenth of broker.inbox_limit each", () => {
    expect(broker({})).toMatchObject({ inboxLimit: 1000, senderShare: 100, replyReserve: 100 });
    expect(broker({ CONDUCTOR_BROKER_INBOX_LIMIT: "5" })).toMatchObject({
      inboxLimit: 5,
      senderShare: 1,
      replyReserve: 0,
    });
    expect(
      broker({ CONDUCTOR_BROKER_SENDER_SHARE: "300", CONDUCTOR_BROKER_REPLY_RESERVE: "50" }),
    ).toMatchObject({ inboxLimit: 1000, senderShare: 300, replyReserve: 50 });
  });

  it("are refused, naming the key, when they leave agents no room", () => {
    const cases: [Record<string, string>, RegExp][] = [
      [
        { CONDUCTOR_BROKER_REPLY_RESERVE: "1000" },
        /"broker.reply_reserve": must be less than broker.inbox_limit \(1000\)/,
      ],
      [
        { CONDUCTOR_BROKER_SENDER_SHARE: "901" },
        /"broker.sender_share": must be at most broker.inbox_limit - broker.reply_reserve \(900\)/,
      ],
      [{ CONDUCTOR_BROKER_SENDER_SHARE: "0" }, /"broker.sender_share"/],
    ];
    for (const [env, message] of cases) {
      expect(() => broker(env)).toThrow(ConfigError);
      expect(() => broker(env)).toThrow(message);
    }
  });
});
