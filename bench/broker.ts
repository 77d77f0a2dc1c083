// Prints the Broker's throughput and latency for durable sends (each answered only once it
// is in SQLite, synchronous FULL) over its Unix socket: `conductor broker` runs as its own
// process, the clients are real gRPC clients in this one:
//   npx node bench/broker.ts [--messages 3000] [--concurrency 32] [--payload 256]
// 1. one sender, one send at a time (latency of a single durable send);
// 2. `concurrency` senders at once (throughput; group commit shares disk syncs);
// 3. send → a subscriber has it (delivery latency), the receiver acknowledging each.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { parseArgs } from "node:util";
import type { Client } from "@connectrpc/connect";
import type { BrokerService, Message } from "../gen/conductor/v1/broker_pb.js";
import {
  agentCredential,
  brokerClient,
  loadBrokerSecret,
  orchestratorCredential,
} from "../services/broker/access.ts";
import { startService } from "../test/harness.ts";

const { values } = parseArgs({
  options: {
    messages: { type: "string", default: "3000" },
    concurrency: { type: "string", default: "32" },
    payload: { type: "string", default: "256" },
  },
});
const N = Number(values.messages);
const C = Number(values.concurrency);
const payload = "x".repeat(Number(values.payload));

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};
const fmt = (label: string, count: number, ms: number, lat: number[]) =>
  `${label.padEnd(34)} ${String(Math.round((count / ms) * 1000)).padStart(7)} msg/s   ` +
  `p50 ${pct(lat, 50).toFixed(2)} ms   p99 ${pct(lat, 99).toFixed(2)} ms`;

const dir = mkdtempSync(path.join(tmpdir(), "broker-bench-"));
const dataDir = path.join(dir, "data");
const service = await startService(
  "broker",
  ["--socket-dir", path.join(dir, "run"), "--data-dir", dataDir],
  {
    CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
    CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1",
    CONDUCTOR_BROKER_INBOX_LIMIT: "1000000",
    CONDUCTOR_BROKER_ACK_TIMEOUT_SECONDS: "60",
  },
);
const secret = loadBrokerSecret(dataDir);
const socketPath = path.join(dir, "run", "broker.sock");
const clients = new Map<string, Client<typeof BrokerService>>();
const b = {
  agent(id: string) {
    let c = clients.get(id);
    if (!c) {
      const credential =
        id === "orchestrator" ? orchestratorCredential(secret) : agentCredential(secret, id);
      c = brokerClient({ socketPath, credential });
      clients.set(id, c);
    }
    return c;
  },
};
const senders = Array.from({ length: C }, (_, i) => `s${i}`);
for (const agentId of ["r", ...senders]) await b.agent("orchestrator").registerAgent({ agentId });
const send = (from: string) =>
  b.agent(from).send({ destination: { case: "receiver", value: "r" }, payload });
for (let i = 0; i < 50; i++) await send("s0"); // warm-up

// 1. Sequential.
const seqLat: number[] = [];
let t0 = performance.now();
for (let i = 0; i < N; i++) {
  const t = performance.now();
  await send("s0");
  seqLat.push(performance.now() - t);
}
const seqMs = performance.now() - t0;

// 2. Concurrent senders.
const conLat: number[] = [];
t0 = performance.now();
await Promise.all(
  senders.map(async (s, i) => {
    const share = Math.floor(N / C) + (i < N % C ? 1 : 0);
    for (let k = 0; k < share; k++) {
      const t = performance.now();
      await send(s);
      conLat.push(performance.now() - t);
    }
  }),
);
const conMs = performance.now() - t0;

// Drain what the first two rounds stored.
for (;;) {
  const { messages } = await b.agent("r").receive({ maxMessages: 100 });
  if (messages.length === 0) break;
  await b.agent("r").ack({ messageIds: messages.map((m) => m.id) });
}

// 3. Delivery latency: send → the subscriber has it (it acknowledges each one).
const sentAt = new Map<string, number>();
const delLat: number[] = [];
const abort = new AbortController();
const stream = b.agent("r").subscribe({ prefetch: 1000 }, { signal: abort.signal });
let received = 0;
const acks: Promise<unknown>[] = [];
const count = Math.min(N, 2000);
const reading = (async () => {
  for await (const { message } of stream) {
    const m = message as Message;
    const at = sentAt.get(m.payload);
    if (at !== undefined) delLat.push(performance.now() - at);
    acks.push(b.agent("r").ack({ messageIds: [m.id] }));
    if (++received === count) return;
  }
})();
t0 = performance.now();
await Promise.all(
  senders.map(async (s, i) => {
    for (let k = i; k < count; k += C) {
      const p = `${s}:${k}`;
      sentAt.set(p, performance.now());
      await b.agent(s).send({ destination: { case: "receiver", value: "r" }, payload: p });
    }
  }),
);
await reading;
const delMs = performance.now() - t0;
await Promise.all(acks);
abort.abort();
await service.stop();

// For scale: how many synchronous (FULL) one-row commits this disk takes per second now.
const probe = new DatabaseSync(path.join(dir, "probe.db"));
probe.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; CREATE TABLE t (x TEXT)");
const insert = probe.prepare("INSERT INTO t VALUES (?)");
t0 = performance.now();
for (let i = 0; i < 300; i++) {
  probe.exec("BEGIN IMMEDIATE");
  insert.run(payload);
  probe.exec("COMMIT");
}
const diskRate = Math.round(300 / ((performance.now() - t0) / 1000));
probe.close();

console.log(
  `Broker, durable sends over a Unix socket (${values.payload}-byte payloads, SQLite WAL synchronous FULL)`,
);
console.log(fmt("1 sender, sequential", N, seqMs, seqLat));
console.log(fmt(`${C} senders, concurrent`, N, conMs, conLat));
console.log(fmt(`send → subscriber (${C} senders)`, count, delMs, delLat));
console.log(`(this disk, bare SQLite: ${diskRate} synchronous commits/s)`);
rmSync(dir, { recursive: true, force: true });
