// A broker.db written before correlation ids were scoped to their requester and replies
// were marked: the Broker opens it, migrates it in place, and loses nothing.
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { describe, expect, it } from "vitest";
import { MessageType } from "../../gen/conductor/v1/broker_pb.js";
import { silentLogger } from "../shared/log.ts";
import { startBrokerServer } from "./serve.ts";
import { startTestBroker } from "./testing.ts";

/** The schema of broker.db before it was migrated (open requests keyed by receiver and id). */
const OLD_SCHEMA = `
CREATE TABLE messages (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, receiver TEXT NOT NULL,
  sender TEXT NOT NULL, topic TEXT NOT NULL DEFAULT '', type INTEGER NOT NULL,
  payload TEXT NOT NULL, correlation_id TEXT NOT NULL DEFAULT '',
  create_time INTEGER NOT NULL, expire_time INTEGER NOT NULL, UNIQUE (receiver, id));
CREATE INDEX messages_expiry ON messages (expire_time);
CREATE TABLE agents (id TEXT PRIMARY KEY, create_time INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE subscriptions (topic TEXT NOT NULL, agent_id TEXT NOT NULL,
  PRIMARY KEY (topic, agent_id)) WITHOUT ROWID;
CREATE TABLE open_requests (receiver TEXT NOT NULL, correlation_id TEXT NOT NULL,
  requester TEXT NOT NULL, answered INTEGER NOT NULL DEFAULT 0, expire_time INTEGER NOT NULL,
  PRIMARY KEY (receiver, correlation_id)) WITHOUT ROWID;
`;

describe("BrokerStore", () => {
  it("migrates a broker.db from before, keeping messages, requests, agents and topics", async () => {
    const now = Date.now();
    const later = now + 3_600_000;
    await using b = await startTestBroker({
      seed(dataDir) {
        const db = new DatabaseSync(path.join(dataDir, "broker.db"));
        db.exec(OLD_SCHEMA);
        const agent = db.prepare("INSERT INTO agents VALUES (?, ?)");
        for (const id of ["agent-1", "agent-2"]) agent.run(id, now);
        db.prepare("INSERT INTO subscriptions VALUES ('group-9', 'agent-2')").run();
        db.prepare(
          `INSERT INTO messages (id, receiver, sender, type, payload, correlation_id, create_time, expire_time)
             VALUES ('m-1', 'agent-2', 'agent-1', ?, 'old question', 'c-old', ?, ?)`,
        ).run(MessageType.TASK_REQUEST, now, later);
        db.prepare("INSERT INTO open_requests VALUES ('agent-2', 'c-old', 'agent-1', 0, ?)").run(
          later,
        );
        db.close();
      },
    });
    const { messages } = await b.agent("agent-2").receive({});
    expect(messages.map((m) => [m.id, m.sender, m.payload, m.correlationId])).toEqual([
      ["m-1", "agent-1", "old question", "c-old"],
    ]);
    await b.agent("agent-2").ack({ messageIds: ["m-1"] });
    expect(
      (await b.agent("agent-2").reply({ correlationId: "c-old", payload: "new answer" })).receiver,
    ).toBe("agent-1");
    const got = await b.agent("agent-1").receive({});
    expect(got.messages.map((m) => [m.sender, m.type, m.payload])).toEqual([
      ["agent-2", MessageType.TASK_RESPONSE, "new answer"],
    ]);
    // New requests use the migrated table (keyed by requester too).
    await b.agent("agent-1").send({
      destination: { case: "receiver", value: "agent-2" },
      type: MessageType.TASK_REQUEST,
      payload: "follow-up",
      correlationId: "c-old",
    });
    expect((await b.agent("agent-2").receive({})).messages.map((m) => m.payload)).toEqual([
      "follow-up",
    ]);
    const { agents } = await b.orchestrator().listAgents({});
    expect(agents.map((a) => [a.id, a.topics])).toEqual([
      ["agent-1", []],
      ["agent-2", ["group-9"]],
      ["orchestrator", []],
    ]);
    // Opening it again changes nothing more.
    await b.restart();
    expect((await b.agent("agent-1").receive({})).messages.map((m) => m.payload)).toEqual([
      "new answer",
    ]);
  });

  it("refuses a second Broker on the same data folder before it touches anything", async () => {
    await using b = await startTestBroker();
    await b.register("agent-1");
    await expect(
      startBrokerServer({
        dataDir: b.dataDir,
        socketPath: path.join(b.dir, "second.sock"),
        ackTimeoutMs: 30_000,
        inboxLimit: 100,
        senderShare: 10,
        replyReserve: 10,
        ttlMs: 60_000,
        maxPayloadBytes: 1000,
        requestTimeoutMs: 1000,
        log: silentLogger,
      }),
    ).rejects.toThrow(/broker\.db is in use by another running Broker/);
    // The first still stores and delivers.
    await b
      .orchestrator()
      .send({ destination: { case: "receiver", value: "agent-1" }, payload: "hi" });
    expect((await b.agent("agent-1").receive({})).messages.map((m) => m.payload)).toEqual(["hi"]);
  });
});
