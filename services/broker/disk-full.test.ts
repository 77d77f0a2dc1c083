// The Broker with its data folder on a 3 MB tmpfs that fills up: a send it cannot store is
// refused with RESOURCE_EXHAUSTED naming the disk, nothing acknowledged is lost, reads and
// acks go on, a restart on the full disk serves what is stored, and once space returns it
// works as before. Needs root (mount); every mount is this run's own and is removed.
import { execFileSync } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import type { Message } from "../../gen/conductor/v1/broker_pb.js";
import { failureOf } from "../../test/rpc-errors.ts";
import { startTestBroker, type TestBroker } from "./testing.ts";

const isRoot = process.getuid?.() === 0;
const PAYLOAD = 60_000;

/** A 3 MB tmpfs of this test's own; disposing unmounts and removes it. */
function smallDisk(): AsyncDisposable & { path: string } {
  const dir = mkdtempSync(path.join(tmpdir(), "broker-full-"));
  const mnt = path.join(dir, "data");
  mkdirSync(mnt);
  execFileSync("mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", mnt]);
  return {
    path: mnt,
    async [Symbol.asyncDispose]() {
      execFileSync("umount", ["--lazy", mnt]); // lazy: detached even if a failed test left a file open
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Writes `name` in `dir` until the disk is full (or `bytes` are written); returns its path. */
function filler(dir: string, name: string, bytes = Infinity): string {
  const file = path.join(dir, name);
  const fd = openSync(file, "w");
  const chunk = Buffer.alloc(16_384, 7);
  try {
    for (let n = 0; n < bytes; n += chunk.length) writeSync(fd, chunk);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOSPC") throw e;
  } finally {
    closeSync(fd);
  }
  return file;
}

function startOn(dataDir: string, clock?: () => number): Promise<TestBroker> {
  return startTestBroker({ dataDir, inboxLimit: 100_000, maxPayloadBytes: 65_536, clock });
}

/** Every message waiting for `agent`, acknowledging each batch read. */
async function drain(b: TestBroker, agent: string): Promise<Message[]> {
  const all: Message[] = [];
  for (;;) {
    const { messages } = await b.agent(agent).receive({ maxMessages: 100 });
    if (messages.length === 0) return all;
    all.push(...messages);
    await b.agent(agent).ack({ messageIds: messages.map((m) => m.id) });
  }
}

describe.skipIf(!isRoot)("the Broker on a full disk", () => {
  it("refuses what it cannot store with RESOURCE_EXHAUSTED naming the disk, keeps serving, and recovers", async () => {
    await using disk = smallDisk();
    await using b = await startOn(disk.path);
    await b.register("r");
    const spare = filler(disk.path, "spare", 1_000_000);
    const sent = new Map<string, string>(); // message id → payload
    let refusal: ConnectError | undefined;
    for (let i = 0; i < 100 && !refusal; i++) {
      const payload = `${i}:`.padEnd(PAYLOAD, "x");
      try {
        const res = await b
          .agent("a")
          .send({ destination: { case: "receiver", value: "r" }, payload });
        sent.set(res.messageId, payload);
      } catch (e) {
        refusal = ConnectError.from(e);
      }
    }
    expect(sent.size).toBeGreaterThan(5);
    expect(refusal?.code).toBe(Code.ResourceExhausted);
    expect(refusal?.rawMessage).toContain(
      `the disk holding the Broker's data folder (${disk.path}) is full`,
    );
    const rest = filler(disk.path, "rest"); // not a byte left
    const again = await failureOf(
      b
        .agent("a")
        .send({ destination: { case: "receiver", value: "r" }, payload: "z".repeat(PAYLOAD) }),
    );
    expect(again.code).toBe(Code.ResourceExhausted);

    // Reads, acks and listing go on; an agent never seen before can read its (empty) inbox.
    const read = (await b.agent("r").receive({ maxMessages: 5 })).messages;
    expect(read.map((m) => sent.get(m.id))).toEqual(read.map((m) => m.payload));
    expect((await b.agent("r").ack({ messageIds: read.map((m) => m.id) })).acked).toBe(5);
    const { agents } = await b.orchestrator().listAgents({});
    expect(agents.find((a) => a.id === "r")?.waiting).toBe(sent.size - 5);
    expect((await b.agent("newcomer").receive({})).messages).toEqual([]);

    // Space returns: sends work again, and after a restart exactly what was sent and not
    // acknowledged is there.
    rmSync(spare);
    rmSync(rest);
    const after = await b.agent("a").send({
      destination: { case: "receiver", value: "r" },
      payload: "after",
    });
    sent.set(after.messageId, "after");
    await b.restart();
    const acked = new Set(read.map((m) => m.id));
    const left = await drain(b, "r");
    expect(new Map(left.map((m) => [m.id, m.payload]))).toEqual(
      new Map([...sent].filter(([id]) => !acked.has(id))),
    );
  });

  it("fails only the writers of a batch the disk cannot take, and stays up", async () => {
    await using disk = smallDisk();
    await using b = await startOn(disk.path);
    const members = Array.from({ length: 60 }, (_, i) => `m${i}`);
    for (const agentId of members)
      await b.orchestrator().registerAgent({ agentId, topics: ["all"] });
    await b.register("r");
    const spare = filler(disk.path, "spare", 2_000_000);
    // One topic message of 60 × 60 KB: more than SQLite's page cache holds, so it spills to the
    // full disk mid-write and SQLite undoes the whole commit; a small send shares that commit.
    const [big, small] = await Promise.allSettled([
      b
        .orchestrator()
        .send({ destination: { case: "topic", value: "all" }, payload: "t".repeat(PAYLOAD) }),
      b.agent("a").send({ destination: { case: "receiver", value: "r" }, payload: "small" }),
    ]);
    expect(big.status === "rejected" && ConnectError.from(big.reason).code).toBe(
      Code.ResourceExhausted,
    );
    if (small.status === "rejected") {
      expect(ConnectError.from(small.reason).code).toBe(Code.ResourceExhausted);
    }
    // Nothing of the refused message was stored; the Broker serves and stores again.
    expect((await b.agent("m7").receive({})).messages).toEqual([]);
    rmSync(spare);
    await b.orchestrator().send({ destination: { case: "topic", value: "all" }, payload: "hello" });
    expect((await b.agent("m7").receive({})).messages.map((m) => m.payload)).toEqual(["hello"]);
    const smallStored = small.status === "fulfilled" ? ["small"] : [];
    expect((await b.agent("r").receive({})).messages.map((m) => m.payload)).toEqual(smallStored);
  });

  it("starts on a full disk and serves what it stored; stores again once space returns", async () => {
    await using disk = smallDisk();
    await using b = await startOn(disk.path);
    await b.register("r");
    const sent: string[] = [];
    for (let i = 0; i < 5; i++) {
      sent.push(`${i}:`.padEnd(PAYLOAD, "y"));
      await b.agent("a").send({ destination: { case: "receiver", value: "r" }, payload: sent[i]! });
    }
    let rest = "";
    await b.restart(() => (rest = filler(disk.path, "rest")));
    const read = (await b.agent("r").receive({ maxMessages: 10 })).messages;
    expect(read.map((m) => m.payload)).toEqual(sent);
    const refused = await failureOf(
      b.agent("a").send({ destination: { case: "receiver", value: "r" }, payload: "more" }),
    );
    expect(refused.code).toBe(Code.ResourceExhausted);
    expect((await b.agent("r").ack({ messageIds: read.map((m) => m.id) })).acked).toBe(5);
    rmSync(rest);
    await b.agent("a").send({ destination: { case: "receiver", value: "r" }, payload: "more" });
    await b.restart();
    expect((await drain(b, "r")).map((m) => m.payload)).toEqual(["more"]);
  });

  it("expires messages on a full disk, and deletes them for good once space returns", async () => {
    let now = Date.now();
    await using disk = smallDisk();
    await using b = await startOn(disk.path, () => now);
    await b.register("r");
    const spare = filler(disk.path, "spare", 500_000);
    for (let i = 0; i < 100; i++) {
      const payload = `${i}:`.padEnd(PAYLOAD, "e");
      const sent = await b
        .agent("a")
        .send({
          destination: { case: "receiver", value: "r" },
          payload,
          ttlSeconds: 60,
        })
        .then(
          () => true,
          () => false,
        );
      if (!sent) break;
    }
    const rest = filler(disk.path, "rest");
    now += 61_000;
    // The sweep cannot write its delete; the messages are gone for readers all the same.
    await b.server.broker.sweep().catch(() => {});
    expect((await b.agent("r").receive({})).messages).toEqual([]);
    rmSync(rest);
    rmSync(spare);
    await b.server.broker.sweep();
    await b.restart();
    // What is loaded at start is what is on disk: nothing of them is left.
    const { agents } = await b.orchestrator().listAgents({});
    expect(agents.find((a) => a.id === "r")?.waiting).toBe(0);
    expect((await b.agent("r").receive({})).messages).toEqual([]);
  });
});
