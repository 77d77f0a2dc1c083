// Prints the Broker's throughput and latency for durable sends (each answered only once it
// is in SQLite, synchronous FULL) over its Unix socket, beside its fair peer measured in the
// same run: bare node:sqlite, the same row in the same table shape, one synchronous (FULL)
// commit per message, from the same number of concurrent senders. `conductor broker` runs as
// its own process; the clients are real gRPC clients in this one: senders use @grpc/grpc-js
// (one channel each; connect-node's client costs about 2.4× the CPU a call, 420 against 170 µs
// warm, measured ad hoc with 32 senders; in one process on 2 cores it, not the Broker, set the
// pace), the receiver connect:
//   npx node bench/broker.ts [--messages 3000] [--concurrency 32] [--payload 256] [--rounds 3]
//     [--open-seconds 3]
// (BENCH_NODE_OPTIONS="--cpu-prof --cpu-prof-dir=DIR" profiles the Broker process.)
// 1. one sender, one send at a time (latency of a single durable send);
// 2. `rounds` times, alternately: the peer, then the Broker, `concurrency` senders at once
//    (closed loop); the median of each round's ratio is the figure (target ≥ 0.8): a round's
//    two halves run back to back, so a busy machine slows both alike;
// 3. open loop: sends started at a fixed rate, half the peer's, for `open-seconds`; latency
//    counts from when each send was due (target p99 ≤ 10 ms);
// 4. send → a subscriber has it (delivery latency), the receiver acknowledging each.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { parseArgs } from "node:util";
import type { Client } from "@connectrpc/connect";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  SendRequestSchema,
  SendResponseSchema,
  type BrokerService,
  type Message,
} from "../gen/conductor/v1/broker_pb.js";
import {
  agentCredential,
  brokerClient,
  loadBrokerSecret,
  orchestratorCredential,
} from "../services/broker/access.ts";
import { startService } from "../test/harness.ts";
import { cleanUpIfStopped, cpuMsOf } from "./peers-common.ts";

const USAGE =
  "usage: node bench/broker.ts [--messages N] [--concurrency N] [--payload BYTES] [--rounds N] [--open-seconds N]";
/** Ends the bench with a usage error (exit 2), not a stack. */
function usage(why: string): never {
  process.stderr.write(`bench/broker.ts: ${why}\n${USAGE}\n`);
  process.exit(2);
}
const { values } = (() => {
  try {
    return parseArgs({
      options: {
        messages: { type: "string", default: "3000" },
        concurrency: { type: "string", default: "32" },
        payload: { type: "string", default: "256" },
        rounds: { type: "string", default: "3" },
        "open-seconds": { type: "string", default: "3" },
      },
    });
  } catch (e) {
    return usage((e as Error).message);
  }
})();
/** A whole-number flag from `min` to `max`; anything else is a usage error. */
function flag(name: keyof typeof values, min: number, max: number): number {
  const n = Number(values[name]);
  if (!/^\d+$/.test(values[name]) || n < min || n > max)
    usage(`--${name} must be a whole number from ${min} to ${max}`);
  return n;
}
const N = flag("messages", 1, 1_000_000);
/** Sends made, and not timed, before the first timed one. */
const WARMUP = 2000;
const C = flag("concurrency", 1, 1000);
const ROUNDS = flag("rounds", 1, 100);
const OPEN_MS = flag("open-seconds", 1, 3600) * 1000;
const payload = "x".repeat(flag("payload", 0, 1024 * 1024));

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN;
};
const median = (xs: number[]) => pct(xs, 50);
const rate = (count: number, ms: number) => Math.round((count / ms) * 1000);
const fmt = (label: string, perSecond: number, lat: number[]) =>
  `${label.padEnd(38)} ${String(perSecond).padStart(7)} msg/s   ` +
  `p50 ${pct(lat, 50).toFixed(2)} ms   p99 ${pct(lat, 99).toFixed(2)} ms`;

const dir = mkdtempSync(path.join(tmpdir(), "broker-bench-"));
const dataDir = path.join(dir, "data");
const service = await startService(
  "broker",
  ["--socket-dir", path.join(dir, "run"), "--data-dir", dataDir],
  {
    CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
    CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1",
    CONDUCTOR_OBSERVABILITY_BROKER_METRICS_PORT: "-1",
    CONDUCTOR_BROKER_INBOX_LIMIT: "1000000",
    CONDUCTOR_BROKER_ACK_TIMEOUT_SECONDS: "60",
    ...(process.env["BENCH_NODE_OPTIONS"]
      ? { NODE_OPTIONS: process.env["BENCH_NODE_OPTIONS"] }
      : {}),
  },
);
// Stopped early (Ctrl-C, SIGTERM): the Broker and the temp folder go too.
cleanUpIfStopped(() => {
  service.proc.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});
/** The Broker process's CPU time so far (user + system), in ms. */
const brokerCpuMs = () => cpuMsOf(service.proc.pid!);
const secret = loadBrokerSecret(dataDir);
const socketPath = path.join(dir, "run", "broker.sock");
const clients = new Map<string, Client<typeof BrokerService>>();
const agent = (id: string) => {
  let c = clients.get(id);
  if (!c) {
    const credential =
      id === "orchestrator" ? orchestratorCredential(secret) : agentCredential(secret, id);
    c = brokerClient({ socketPath, credential });
    clients.set(id, c);
  }
  return c;
};
const senders = Array.from({ length: C }, (_, i) => `s${i}`);
for (const agentId of ["r", ...senders]) await agent("orchestrator").registerAgent({ agentId });
/** Each sender's grpc-js channel and its credential, as call metadata. */
const channels = new Map<string, { client: grpc.Client; metadata: grpc.Metadata }>();
for (const s of senders) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${agentCredential(secret, s)}`);
  channels.set(s, {
    client: new grpc.Client(`unix:${socketPath}`, grpc.credentials.createInsecure()),
    metadata,
  });
}
const bytes = (m: Uint8Array) => Buffer.from(m.buffer, m.byteOffset, m.byteLength);
/** One durable send from `from` to "r"; resolves once the Broker answered (stored). */
const send = (from: string, body = payload) => {
  const { client, metadata } = channels.get(from)!;
  const req = create(SendRequestSchema, {
    destination: { case: "receiver", value: "r" },
    payload: body,
  });
  return new Promise<void>((resolve, reject) =>
    client.makeUnaryRequest(
      "/conductor.v1.BrokerService/Send",
      (m: Uint8Array) => bytes(m),
      (b: Buffer) => fromBinary(SendResponseSchema, b),
      toBinary(SendRequestSchema, req),
      metadata,
      (e) => (e ? reject(e) : resolve()),
    ),
  );
};
// Warm-up, so both sides are measured warm (V8 optimises a function after many calls).
await Promise.all(
  senders.map(async (s) => {
    for (let i = 0; i < WARMUP / C; i++) await send(s);
  }),
);

/** Takes every message waiting for "r" out of its inbox (keeps the rounds alike). */
async function drain() {
  for (;;) {
    const { messages } = await agent("r").receive({ maxMessages: 100 });
    if (messages.length === 0) return;
    await agent("r").ack({ messageIds: messages.map((m) => m.id) });
  }
}

/** Closed-loop senders (all by default) sharing `count` calls of `one`; the rate and each call's latency. */
async function closedLoop(
  count: number,
  one: (sender: string, k: number) => Promise<unknown>,
  from = senders,
) {
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(
    from.map(async (s, i) => {
      for (let k = i; k < count; k += from.length) {
        const t = performance.now();
        await one(s, k);
        lat.push(performance.now() - t);
      }
    }),
  );
  return { perSecond: rate(count, performance.now() - t0), lat };
}

// The peer: the Broker's message row (same columns and indexes), one commit per message.
const peer = new DatabaseSync(path.join(dir, "peer.db"));
peer.exec(`PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
  CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
    receiver TEXT NOT NULL, sender TEXT NOT NULL, topic TEXT NOT NULL DEFAULT '',
    type INTEGER NOT NULL, payload TEXT NOT NULL, correlation_id TEXT NOT NULL DEFAULT '',
    create_time INTEGER NOT NULL, expire_time INTEGER NOT NULL,
    reply INTEGER NOT NULL DEFAULT 0, UNIQUE (receiver, id));
  CREATE INDEX messages_expiry ON messages (expire_time);`);
const peerInsert = peer.prepare(
  `INSERT INTO messages (id, receiver, sender, topic, type, payload, correlation_id, create_time, expire_time, reply)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
);
const peerSend = async (sender: string) => {
  const now = Date.now();
  peer.exec("BEGIN IMMEDIATE");
  peerInsert.run(crypto.randomUUID(), "r", sender, "", 1, payload, "", now, now + 3_600_000, 0);
  peer.exec("COMMIT");
  await Promise.resolve(); // the next sender's turn
};

// 1. Sequential.
const seq = await closedLoop(Math.min(N, 1000), () => send("s0"), ["s0"]);
await drain();

// 2. Rounds: the peer, then the Broker, alternately.
const peerRates: number[] = [];
const brokerRates: number[] = [];
let brokerLat: number[] = [];
const cpuPerMessage: number[] = [];
const clientCpuPerMessage: number[] = [];
for (let round = 0; round < ROUNDS; round++) {
  peerRates.push((await closedLoop(N, (s) => peerSend(s))).perSecond);
  const cpu0 = brokerCpuMs();
  const own0 = process.cpuUsage();
  const r = await closedLoop(N, (s) => send(s));
  const own = process.cpuUsage(own0);
  cpuPerMessage.push(((brokerCpuMs() - cpu0) * 1000) / N);
  clientCpuPerMessage.push((own.user + own.system) / N);
  brokerRates.push(r.perSecond);
  brokerLat = brokerLat.concat(r.lat);
  await drain();
}
peer.close();
const peerRate = median(peerRates);
const brokerRate = median(brokerRates);
const ratio = median(brokerRates.map((b, i) => b / peerRates[i]!));

// 3. Open loop at half the peer's rate: send i is due at t0 + i / rate, whatever came back.
const openRate = Math.max(1, Math.floor(peerRate / 2));
const openCount = Math.max(1, Math.floor((openRate * OPEN_MS) / 1000));
const openLat: number[] = [];
const inFlight: Promise<unknown>[] = [];
let started = 0;
const openT0 = performance.now();
while (started < openCount) {
  const due = Math.min(openCount, Math.floor(((performance.now() - openT0) * openRate) / 1000) + 1);
  for (; started < due; started++) {
    const dueAt = openT0 + (started * 1000) / openRate;
    inFlight.push(send(senders[started % C]!).then(() => openLat.push(performance.now() - dueAt)));
  }
  await new Promise((resolve) => setTimeout(resolve, 1));
}
await Promise.all(inFlight);
const openMs = performance.now() - openT0;
await drain();

// 4. Delivery latency: send → the subscriber has it (it acknowledges each one).
const sentAt = new Map<string, number>();
const delLat: number[] = [];
const abort = new AbortController();
const stream = agent("r").subscribe({ prefetch: 1000 }, { signal: abort.signal });
let received = 0;
const acks: Promise<unknown>[] = [];
const count = Math.min(N, 2000);
const reading = (async () => {
  for await (const { message } of stream) {
    const m = message as Message;
    const at = sentAt.get(m.payload);
    if (at !== undefined) delLat.push(performance.now() - at);
    acks.push(agent("r").ack({ messageIds: [m.id] }));
    if (++received === count) return;
  }
})();
const del = await closedLoop(count, (s, k) => {
  const body = `${s}:${k}`;
  sentAt.set(body, performance.now());
  return send(s, body);
});
await reading;
await Promise.all(acks);
abort.abort();
for (const { client } of channels.values()) client.close();
await service.stop();
rmSync(dir, { recursive: true, force: true });

console.log(
  `Broker, durable sends over a Unix socket (${values.payload}-byte payloads, SQLite WAL synchronous FULL)`,
);
console.log(fmt("1 sender, sequential", seq.perSecond, seq.lat));
console.log(fmt(`peer: node:sqlite, ${C} senders`, peerRate, []).replace(/ {3}p50.*/, ""));
console.log(fmt(`Broker, ${C} senders, concurrent`, brokerRate, brokerLat));
console.log(
  `  rounds (peer / Broker msg/s): ${peerRates.map((p, i) => `${p} / ${brokerRates[i]}`).join(", ")}; ` +
    `CPU a message: the Broker's ${median(cpuPerMessage).toFixed(0)} µs, the senders' (this process) ${median(clientCpuPerMessage).toFixed(0)} µs`,
);
console.log(`  ratio Broker / peer: ${ratio.toFixed(2)}, the median of the rounds' (target ≥ 0.8)`);
console.log(
  fmt(
    `open loop at ${openRate}/s for ${(openMs / 1000).toFixed(1)} s`,
    rate(openCount, openMs),
    openLat,
  ) + ` (target p99 ≤ 10 ms)`,
);
console.log(fmt(`send → subscriber (${C} senders)`, del.perSecond, delLat));
