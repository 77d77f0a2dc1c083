// Identity, permissions and bad input, through a real Broker on a Unix socket: each refusal
// has its gRPC code and a message naming what was wrong, and stores nothing.
import { chmodSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BrokerService, type MessageType } from "../../gen/conductor/v1/broker_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { unixTransport } from "../shared/transport.ts";
import { brokerClient } from "./access.ts";
import {
  agentCredential,
  loadBrokerSecret,
  orchestratorCredential,
  verifyCredential,
} from "./credentials.ts";
import { startTestBroker, type TestBroker } from "./testing.ts";
import { failureOf } from "../../test/rpc-errors.ts";

const send = (receiver: string, payload = "x") => ({
  destination: { case: "receiver" as const, value: receiver },
  payload,
});

describe("broker credentials", () => {
  it("makes one key per data folder (mode 0600) and refuses a key others can read", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "broker-key-"));
    try {
      const key = loadBrokerSecret(dir);
      expect(key.length).toBe(32);
      expect(statSync(path.join(dir, "broker.key")).mode & 0o777).toBe(0o600);
      expect(loadBrokerSecret(dir).equals(key)).toBe(true);
      const cred = agentCredential(key, "agent-1");
      expect(verifyCredential(key, cred)).toEqual({ id: "agent-1", orchestrator: false });
      expect(verifyCredential(key, orchestratorCredential(key))).toEqual({
        id: "orchestrator",
        orchestrator: true,
      });
      expect(verifyCredential(key, cred.replace("agent-1", "agent-2"))).toBeUndefined();
      expect(() => agentCredential(key, "orchestrator")).toThrow(/reserved/);
      expect(() => agentCredential(key, "bad id")).toThrow(/not usable/);
      chmodSync(path.join(dir, "broker.key"), 0o644);
      expect(() => loadBrokerSecret(dir)).toThrow(/readable by others.*chmod 600/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("Broker access control and bad input", () => {
  let b: TestBroker;
  beforeAll(async () => {
    // One agent may fill a whole inbox here, to reach its limit (see shares.test.ts).
    b = await startTestBroker({
      inboxLimit: 5,
      senderShare: 5,
      replyReserve: 0,
      maxPayloadBytes: 1000,
    });
    await b.register("agent-1", "agent-2", "full");
  });
  afterAll(async () => {
    await b?.close();
  });

  it("refuses calls without a valid credential (UNAUTHENTICATED), but not health checks", async () => {
    const other = mkdtempSync(path.join(tmpdir(), "broker-key-"));
    const foreignKey = loadBrokerSecret(other);
    rmSync(other, { recursive: true, force: true });
    const cases: [string | undefined, RegExp][] = [
      [undefined, /no credential: send the metadata `authorization: Bearer <credential>`/],
      ["garbage", /not valid on this Broker/],
      [agentCredential(foreignKey, "agent-1"), /not valid on this Broker/],
      [`agent-1.${"A".repeat(43)}`, /not valid on this Broker/],
    ];
    for (const [credential, message] of cases) {
      const client =
        credential === undefined
          ? createClient(BrokerService, unixTransport(b.socketPath))
          : brokerClient({ socketPath: b.socketPath, credential });
      const got = await failureOf(client.send(send("agent-2")));
      expect(got.code, got.message).toBe(Code.Unauthenticated);
      expect(got.message).toMatch(message);
    }
    const health = createClient(Health, unixTransport(b.socketPath));
    expect((await health.check({})).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    expect((await b.agent("agent-2").receive({})).messages).toEqual([]);
  });

  it("refuses impersonation and reading another's inbox (PERMISSION_DENIED), storing nothing", async () => {
    const a1 = b.agent("agent-1");
    const cases: [Promise<unknown>, RegExp][] = [
      [
        a1.send({ ...send("agent-2"), sender: "agent-2" }),
        /"agent-1" may not send as "agent-2": the sender is always the caller's own identity/,
      ],
      [
        a1.request({ sender: "orchestrator", receiver: "agent-2", payload: "x" }),
        /may not send as "orchestrator"/,
      ],
      [a1.receive({ agentId: "agent-2" }), /"agent-1" may not read the inbox of "agent-2"/],
      [
        (async () => {
          for await (const _ of a1.subscribe({ agentId: "agent-2" })) break;
        })(),
        /may not read the inbox of "agent-2"/,
      ],
      [a1.registerAgent({ agentId: "agent-9" }), /only the Orchestrator may register agents/],
    ];
    for (const [call, message] of cases) {
      const got = await failureOf(call);
      expect(got.code, got.message).toBe(Code.PermissionDenied);
      expect(got.message).toMatch(message);
    }
    expect((await b.agent("agent-2").receive({})).messages).toEqual([]);
    const { agents } = await a1.listAgents({});
    expect(agents.map((a) => a.id)).not.toContain("agent-9");
  });

  it("refuses a send to a full inbox (RESOURCE_EXHAUSTED) and loses nothing accepted", async () => {
    const a1 = b.agent("agent-1");
    for (let i = 0; i < 5; i++) await a1.send(send("full", `m${i}`));
    const full = await failureOf(a1.send(send("full", "m5")));
    expect(full.code).toBe(Code.ResourceExhausted);
    expect(full.message).toMatch(/the inbox of "full" is full: 5 messages .*broker.inbox_limit/);
    // A topic send with one full member is refused whole: the other member gets nothing.
    await b.orchestrator().registerAgent({ agentId: "full", topics: ["t-full"] });
    await b.orchestrator().registerAgent({ agentId: "agent-2", topics: ["t-full"] });
    await b.orchestrator().registerAgent({ agentId: "agent-1", topics: ["t-full"] });
    const fan = await failureOf(
      a1.send({ destination: { case: "topic", value: "t-full" }, payload: "fan" }),
    );
    expect(fan.code).toBe(Code.ResourceExhausted);
    expect((await b.agent("agent-2").receive({})).messages).toEqual([]);
    const got = await b.agent("full").receive({ maxMessages: 100 });
    expect(got.messages.map((m) => m.payload)).toEqual(["m0", "m1", "m2", "m3", "m4"]);
    await b.agent("full").ack({ messageIds: got.messages.map((m) => m.id) });
    await a1.send(send("full", "after"));
    expect((await b.agent("full").receive({})).messages.map((m) => m.payload)).toEqual(["after"]);
  });

  it("refuses bad input with the right code and a clear message", async () => {
    const a1 = b.agent("agent-1");
    const cases: [Promise<unknown>, Code, RegExp][] = [
      [
        a1.send(send("agent-2", "x".repeat(1001))),
        Code.InvalidArgument,
        /payload is 1001 bytes, over the limit of 1000 \(broker.max_payload_bytes\)/,
      ],
      [a1.send(send("nobody")), Code.NotFound, /agent "nobody" is not known to the Broker/],
      [
        a1.send({ destination: { case: "topic", value: "" }, payload: "x" }),
        Code.InvalidArgument,
        /topic must not be empty/,
      ],
      [
        a1.send({ destination: { case: "topic", value: "no spaces" }, payload: "x" }),
        Code.InvalidArgument,
        /topic "no spaces" is not valid/,
      ],
      [a1.send({ payload: "x" }), Code.InvalidArgument, /needs a receiver .* or a topic/],
      [a1.send(send("")), Code.InvalidArgument, /receiver must not be empty/],
      [
        a1.send({ ...send("agent-2"), type: 99 as MessageType }),
        Code.InvalidArgument,
        /type 99 is unknown/,
      ],
      [a1.request({ receiver: "nobody", payload: "x" }), Code.NotFound, /"nobody" is not known/],
      [
        a1.request({ receiver: "agent-1", payload: "x" }),
        Code.InvalidArgument,
        /cannot wait for a reply from itself/,
      ],
      [a1.reply({ correlationId: "", payload: "x" }), Code.InvalidArgument, /is required/],
      [
        a1.reply({ correlationId: "never-asked", payload: "x" }),
        Code.NotFound,
        /no open request with correlation id "never-asked" was sent to "agent-1"/,
      ],
      [a1.receive({ maxMessages: 101 }), Code.InvalidArgument, /max_messages/],
      [a1.receive({ topics: [""] }), Code.InvalidArgument, /topic must not be empty/],
      [
        b.orchestrator().registerAgent({ agentId: "orchestrator" }),
        Code.InvalidArgument,
        /reserved/,
      ],
    ];
    for (const [call, code, message] of cases) {
      const got = await failureOf(call);
      expect(got.code, got.message).toBe(code);
      expect(got.message).toMatch(message);
    }
    expect((await b.agent("agent-2").receive({})).messages).toEqual([]);
  });
});
