import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  BrokerAgentSchema,
  MessageSchema,
  MessageType,
  type BrokerAgent,
  type Message,
} from "../../gen/conductor/v1/broker_pb.js";
import type { Logger } from "../shared/log.ts";
import type { BrokerObserver } from "./metrics.ts";
import { PullConsumer, ReplyWaiter, StreamConsumer } from "./consumers.ts";
import { ORCHESTRATOR_ID, type Identity } from "./credentials.ts";
import {
  AlreadyAnsweredError,
  BrokerClosedError,
  CorrelationInUseError,
  InvalidInputError,
  NoOpenRequestError,
  NotAllowedError,
  RequestTimeoutError,
  UnknownReceiverError,
} from "./errors.ts";
import { Mailroom, type Inbox, type Pending } from "./mailroom.ts";
import { refusal, type InboxLimits } from "./quota.ts";
import { BrokerStore, type NewMessage, type OpenRequest } from "./store.ts";
import { Topics } from "./topics.ts";
import {
  checkAgentId,
  checkCorrelationId,
  checkPayload,
  checkSelf,
  checkTopic,
  checkTopics,
} from "./validate.ts";

/** The Broker's settings, already validated (see Config.broker), durations in ms. */
export interface BrokerOptions extends InboxLimits {
  dataDir: string;
  ackTimeoutMs: number;
  ttlMs: number;
  maxPayloadBytes: number;
  requestTimeoutMs: number;
  log: Logger;
  /** Time source (tests move it to expire messages). */
  clock?: () => number;
  /** Told as messages are stored, delivered, acknowledged and expire (metrics). */
  observer?: BrokerObserver | undefined;
}

/** What Send is asked to do; exactly one of receiver and topic is set. */
export interface SendInput {
  sender: string;
  receiver?: string | undefined;
  topic?: string | undefined;
  type: MessageType;
  payload: string;
  correlationId: string;
  ttlSeconds: number;
}

const DEFAULT_PREFETCH = 64;
const MAX_PREFETCH = 1000;
const DEFAULT_RECEIVE = 10;
const MAX_RECEIVE = 100;
const MAX_WAIT_MS = 10 * 60_000;

/**
 * Messages between agents (and the Orchestrator), durable and at least once. Every message
 * is in SQLite before Send answers and stays there until its receiver acknowledges it or it
 * expires; the Mailroom decides, in memory, what is delivered to whom and when it is due
 * again. Topic membership is durable and granted by the Orchestrator (see topics.ts): a
 * message to a topic is stored in the inbox of every member but the sender, online or not.
 * No sender fills another's inbox (see quota.ts), and a request's correlation id is its
 * requester's own.
 */
export class Broker {
  readonly store: BrokerStore;
  private readonly opts: BrokerOptions;
  private readonly clock: () => number;
  private readonly mail: Mailroom;
  private readonly known = new Set<string>([ORCHESTRATOR_ID]);
  private readonly topics = new Topics();
  private readonly closing = new AbortController();
  private readonly sweeper: NodeJS.Timeout;

  constructor(opts: BrokerOptions) {
    this.opts = opts;
    this.clock = opts.clock ?? Date.now;
    this.store = new BrokerStore(opts.dataDir);
    this.mail = new Mailroom({
      clock: this.clock,
      ackTimeoutMs: opts.ackTimeoutMs,
      load: (p) => this.load(p),
      onExpired: (expired) => this.forget(expired),
    });
    for (const id of this.store.agents()) this.known.add(id);
    for (const s of this.store.subscriptions()) this.topics.add(s.agent_id, [s.topic]);
    let restored = 0;
    for (const row of this.store.allMessages()) {
      restored++;
      this.mail.add(
        {
          seq: row.seq,
          id: row.id,
          receiver: row.receiver,
          sender: row.sender,
          share: shareOf(row.sender, row.reply === 1),
          correlationId: row.correlation_id,
          expireAt: row.expire_time,
          leaseUntil: 0,
          deliveries: 0,
          holder: undefined,
          acking: false,
        },
        false,
      );
    }
    const every = Math.min(60_000, Math.max(1000, opts.ttlMs / 4));
    this.sweeper = setInterval(() => {
      this.sweep().catch((e: unknown) => opts.log.warn("expiry sweep failed", { error: e }));
    }, every);
    this.sweeper.unref();
    opts.log.info("broker ready", { waiting_messages: restored, agents: this.known.size - 1 });
  }

  /** Stores a message for one agent or every member of a topic; durable when it resolves. */
  async send(
    caller: Identity,
    input: SendInput,
  ): Promise<{ messageId: string; correlationId: string; deliveredTo: number }> {
    this.assertOpen();
    checkSelf(caller, input.sender, "send as");
    checkPayload(input.payload, this.opts.maxPayloadBytes);
    const ttlMs = this.ttl(input.ttlSeconds);
    const type = input.type === MessageType.UNSPECIFIED ? MessageType.COORDINATION : input.type;
    if (MessageType[type] === undefined) throw new InvalidInputError(`type ${type} is unknown`);
    let receivers: string[];
    let topic = "";
    if (input.topic !== undefined) {
      topic = checkTopic(input.topic);
      this.topics.checkMaySend(caller, topic);
      receivers = [...this.topics.membersOf(topic)].filter((a) => a !== caller.id);
    } else if (input.receiver !== undefined) {
      receivers = [this.knownReceiver(input.receiver)];
    } else {
      throw new InvalidInputError("a message needs a receiver (an agent id) or a topic");
    }
    const id = randomUUID();
    const correlationId =
      checkCorrelationId(input.correlationId) || (type === MessageType.TASK_REQUEST ? id : "");
    await this.see(caller);
    const now = this.clock();
    const openRequests = () => {
      if (type !== MessageType.TASK_REQUEST) return;
      for (const receiver of receivers) {
        this.store.putOpenRequest({
          receiver,
          requester: caller.id,
          correlation_id: correlationId,
          expire_time: now + ttlMs,
        });
      }
    };
    await this.put(
      receivers,
      {
        id,
        sender: caller.id,
        topic,
        type,
        payload: input.payload,
        correlation_id: correlationId,
        create_time: now,
        expire_time: now + ttlMs,
        reply: 0,
      },
      openRequests,
    );
    return { messageId: id, correlationId, deliveredTo: receivers.length };
  }

  /**
   * The caller's inbox as a stream: waiting messages, then new ones, at most `prefetch`
   * unacknowledged at a time. When the stream ends, what it did not acknowledge is
   * offered again at once.
   */
  async subscribe(
    caller: Identity,
    input: { agentId: string; topics: string[]; prefetch: number },
    signal: AbortSignal,
  ): Promise<AsyncIterable<Message>> {
    this.assertOpen();
    checkSelf(caller, input.agentId, "read the inbox of");
    const topics = checkTopics(input.topics);
    const prefetch = input.prefetch || DEFAULT_PREFETCH;
    if (prefetch < 0 || prefetch > MAX_PREFETCH) {
      throw new InvalidInputError(
        `prefetch must be between 0 (default ${DEFAULT_PREFETCH}) and ${MAX_PREFETCH}`,
      );
    }
    const join = this.topics.toJoin(caller, topics);
    await this.see(caller);
    await this.join(caller.id, join);
    const inbox = this.mail.inbox(caller.id);
    const consumer = new StreamConsumer(prefetch);
    const end = () => consumer.queue.end();
    const fail = () => consumer.queue.fail(new BrokerClosedError());
    signal.addEventListener("abort", end);
    this.closing.signal.addEventListener("abort", fail);
    if (this.closing.signal.aborted) fail();
    this.mail.attach(inbox, consumer);
    const mail = this.mail;
    const closing = this.closing.signal;
    return (async function* () {
      try {
        yield* consumer.queue;
      } finally {
        signal.removeEventListener("abort", end);
        closing.removeEventListener("abort", fail);
        mail.detach(inbox, consumer, true);
      }
    })();
  }

  /** Up to `maxMessages` waiting messages, waiting up to `waitMs` for the first. */
  async receive(
    caller: Identity,
    input: { agentId: string; topics: string[]; maxMessages: number; waitMs: number },
    signal: AbortSignal,
  ): Promise<Message[]> {
    this.assertOpen();
    checkSelf(caller, input.agentId, "read the inbox of");
    const topics = checkTopics(input.topics);
    const max = input.maxMessages || DEFAULT_RECEIVE;
    if (max < 0 || max > MAX_RECEIVE) {
      throw new InvalidInputError(
        `max_messages must be between 0 (default ${DEFAULT_RECEIVE}) and ${MAX_RECEIVE}`,
      );
    }
    if (input.waitMs < 0 || input.waitMs > MAX_WAIT_MS) {
      throw new InvalidInputError(`wait_ms must be between 0 and ${MAX_WAIT_MS}`);
    }
    const join = this.topics.toJoin(caller, topics);
    await this.see(caller);
    await this.join(caller.id, join);
    const inbox = this.mail.inbox(caller.id);
    const consumer = new PullConsumer(max);
    this.mail.attach(inbox, consumer);
    const settle = () => consumer.settle();
    const timer = setTimeout(settle, input.waitMs);
    signal.addEventListener("abort", settle);
    this.closing.signal.addEventListener("abort", settle);
    if (signal.aborted || this.closing.signal.aborted) settle();
    try {
      return await consumer.done;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", settle);
      this.closing.signal.removeEventListener("abort", settle);
      this.mail.detach(inbox, consumer, false);
    }
  }

  /** Removes delivered messages of the caller's inbox for good; returns how many were there. */
  async ack(caller: Identity, ids: string[]): Promise<number> {
    this.assertOpen();
    await this.see(caller);
    return this.ackIds(caller.id, ids);
  }

  /**
   * Sends a task_request and waits for the reply with its correlation id from the agent
   * asked; the reply is acknowledged when this returns it.
   */
  async request(
    caller: Identity,
    input: {
      sender: string;
      receiver: string;
      payload: string;
      correlationId: string;
      timeoutMs: number;
    },
    signal: AbortSignal,
  ): Promise<{ reply: Message; correlationId: string }> {
    this.assertOpen();
    checkSelf(caller, input.sender, "send as");
    const receiver = this.knownReceiver(input.receiver);
    if (receiver === caller.id) {
      throw new InvalidInputError("an agent cannot wait for a reply from itself");
    }
    checkPayload(input.payload, this.opts.maxPayloadBytes);
    if (input.timeoutMs < 0) throw new InvalidInputError("timeout_ms must not be negative");
    const timeoutMs = input.timeoutMs || this.opts.requestTimeoutMs;
    const correlationId = checkCorrelationId(input.correlationId) || randomUUID();
    await this.see(caller);
    const inbox = this.mail.inbox(caller.id);
    for (const c of inbox.consumers) {
      if (c instanceof ReplyWaiter && c.correlationId === correlationId) {
        throw new CorrelationInUseError(
          `a Request with correlation id "${correlationId}" is already waiting for its reply`,
        );
      }
    }
    // The caller's own request with this id, if any: another agent's never matches.
    const open = this.store.openRequest(receiver, caller.id, correlationId);
    // Asked before with this id: wait for that answer, unless it was answered and read.
    const replyHere = [...inbox.items.values()].some(
      (p) => p.correlationId === correlationId && p.sender === receiver,
    );
    const send = !open || (open.answered === 1 && !replyHere);
    const waiter = new ReplyWaiter(correlationId, receiver);
    this.mail.attach(inbox, waiter); // a reply that is already here is taken at once
    try {
      if (send) {
        const now = this.clock();
        const ttlMs = this.opts.ttlMs;
        const m: Omit<NewMessage, "receiver"> = {
          id: randomUUID(),
          sender: caller.id,
          topic: "",
          type: MessageType.TASK_REQUEST,
          payload: input.payload,
          correlation_id: correlationId,
          create_time: now,
          expire_time: now + ttlMs,
          reply: 0,
        };
        await this.put([receiver], m, () => {
          this.store.putOpenRequest({
            receiver,
            requester: caller.id,
            correlation_id: correlationId,
            expire_time: now + ttlMs,
          });
        });
      }
      const got = await this.within(waiter.done, timeoutMs, signal, () => {
        return new RequestTimeoutError(
          `"${receiver}" did not reply within ${timeoutMs / 1000} s (correlation id "${correlationId}"); the request stays in its inbox until it expires, and a later reply waits in yours`,
        );
      });
      await this.ackIds(caller.id, [got.message.id]);
      return { reply: got.message, correlationId };
    } finally {
      this.mail.detach(inbox, waiter, false);
    }
  }

  /**
   * Answers a task_request the caller received; the reply goes to whoever asked. Only the
   * agent asked can answer, and when requests from several agents carry the same correlation
   * id the caller must name the requester: a reply never goes to someone it guessed.
   */
  async reply(
    caller: Identity,
    input: { correlationId: string; payload: string; isError: boolean; requester: string },
  ): Promise<{ messageId: string; receiver: string }> {
    this.assertOpen();
    const correlationId = checkCorrelationId(input.correlationId);
    if (!correlationId) {
      throw new InvalidInputError(
        "correlation_id is required: the correlation id of the task_request you answer",
      );
    }
    const requester = input.requester && checkAgentId(input.requester, "requester");
    checkPayload(input.payload, this.opts.maxPayloadBytes);
    await this.see(caller);
    const open = this.openRequestFor(caller.id, correlationId, requester);
    const answered = () =>
      new AlreadyAnsweredError(
        `the request of "${open.requester}" with correlation id "${correlationId}" was answered already`,
      );
    if (open.answered) throw answered();
    const now = this.clock();
    const id = randomUUID();
    await this.put(
      [open.requester],
      {
        id,
        sender: caller.id,
        topic: "",
        type: input.isError ? MessageType.ERROR : MessageType.TASK_RESPONSE,
        payload: input.payload,
        correlation_id: correlationId,
        create_time: now,
        expire_time: now + this.opts.ttlMs,
        reply: 1,
      },
      () => {
        if (!this.store.markAnswered(caller.id, open.requester, correlationId)) throw answered();
      },
    );
    return { messageId: id, receiver: open.requester };
  }

  /** Leaves topics; the Orchestrator may take any agent out of topics. */
  async unsubscribe(caller: Identity, input: { topics: string[]; agentId: string }): Promise<void> {
    this.assertOpen();
    const agentId = input.agentId ? checkAgentId(input.agentId, "agent_id") : caller.id;
    this.topics.checkMayRemove(caller, agentId);
    const names = checkTopics(input.topics);
    await this.see(caller);
    await this.store.commit(
      () => this.store.unsubscribe(agentId, names),
      () => this.topics.remove(agentId, names),
    );
  }

  /** Every identity messages can be sent to, with its inbox depth and topics. */
  async listAgents(caller: Identity): Promise<BrokerAgent[]> {
    this.assertOpen();
    await this.see(caller);
    const topicsOf = this.topics.byAgent();
    return [...this.known].sort().map((id) => {
      const inbox = this.mail.inbox(id);
      return create(BrokerAgentSchema, {
        id,
        connected: inbox.consumers.size > 0,
        waiting: inbox.items.size,
        topics: topicsOf.get(id) ?? [],
        ...(inbox.lastSeen !== undefined ? { lastSeenTime: timestampFromMs(inbox.lastSeen) } : {}),
      });
    });
  }

  /**
   * Makes an agent known before its first call, and a member of topics (the only way an
   * agent becomes one). Orchestrator only.
   */
  async register(caller: Identity, agentId: string, topics: string[]): Promise<void> {
    this.assertOpen();
    if (!caller.orchestrator) {
      throw new NotAllowedError(`only the Orchestrator may register agents, not "${caller.id}"`);
    }
    const id = checkAgentId(agentId, "agent_id");
    if (id === ORCHESTRATOR_ID) throw new InvalidInputError(`"${ORCHESTRATOR_ID}" is reserved`);
    const names = checkTopics(topics);
    const now = this.clock();
    await this.store.commit(
      () => {
        this.store.addAgent(id, now);
        this.store.subscribe(id, names);
      },
      () => {
        this.known.add(id);
        this.topics.add(id, names);
      },
    );
  }

  /** Messages stored and not yet acknowledged, across all inboxes. */
  waiting(): number {
    let n = 0;
    for (const inbox of this.mail.all()) n += inbox.items.size;
    return n;
  }

  /** Drops expired messages and requests from memory and disk; returns the messages dropped. */
  async sweep(): Promise<number> {
    if (this.closing.signal.aborted) return 0;
    const now = this.clock();
    const expired: Pending[] = [];
    for (const inbox of this.mail.all()) {
      for (const p of inbox.items.values()) if (p.expireAt <= now && !p.acking) expired.push(p);
    }
    for (const p of expired) this.mail.remove(p.receiver, [p.id]);
    await this.store.commit(() => this.store.deleteExpired(now));
    if (expired.length > 0) {
      this.opts.observer?.expired(expired.length);
      this.opts.log.info("messages expired", { count: expired.length });
    }
    return expired.length;
  }

  /** Ends every stream and wait, writes what is queued and closes the database. */
  close(): void {
    if (this.closing.signal.aborted) return;
    this.closing.abort();
    clearInterval(this.sweeper);
    this.mail.close();
    this.store.close();
  }

  private assertOpen(): void {
    if (this.closing.signal.aborted) throw new BrokerClosedError();
  }

  private knownReceiver(receiver: string): string {
    const id = checkAgentId(receiver, "receiver");
    if (!this.known.has(id)) throw new UnknownReceiverError(id);
    return id;
  }

  private ttl(seconds: number): number {
    if (seconds < 0) throw new InvalidInputError("ttl_seconds must not be negative");
    if (seconds === 0) return this.opts.ttlMs;
    if (seconds * 1000 > this.opts.ttlMs) {
      throw new InvalidInputError(
        `ttl_seconds ${seconds} is over the Broker's limit of ${this.opts.ttlMs / 1000} (broker.ttl_seconds)`,
      );
    }
    return seconds * 1000;
  }

  /** Notes that an identity called; the first call of an unknown agent makes it known. */
  private async see(caller: Identity): Promise<void> {
    this.mail.inbox(caller.id).lastSeen = this.clock();
    if (this.known.has(caller.id)) return;
    const now = this.clock();
    await this.store.commit(
      () => this.store.addAgent(caller.id, now),
      () => this.known.add(caller.id),
    );
  }

  /** Makes the caller a member of topics it named (only the Orchestrator gets here with any). */
  private async join(agentId: string, topics: string[]): Promise<void> {
    if (topics.length === 0) return;
    await this.store.commit(
      () => this.store.subscribe(agentId, topics),
      () => this.topics.add(agentId, topics),
    );
  }

  /**
   * The open request to `receiver` with this correlation id that a Reply answers: the only
   * one, or the one `requester` made. NOT_FOUND when there is none, INVALID_ARGUMENT naming
   * the requesters when several agents used the id and the caller named none.
   */
  private openRequestFor(receiver: string, correlationId: string, requester: string): OpenRequest {
    const all = this.store.openRequestsTo(receiver, correlationId);
    const found = requester ? all.filter((r) => r.requester === requester) : all;
    if (found.length === 0) {
      const from = requester ? ` by "${requester}"` : "";
      throw new NoOpenRequestError(
        `no open request${from} with correlation id "${correlationId}" was sent to "${receiver}" (or it expired)`,
      );
    }
    if (found.length > 1) {
      throw new InvalidInputError(
        `requests from ${found.map((r) => `"${r.requester}"`).join(", ")} carry correlation id "${correlationId}": name the one you answer in requester (the request's sender)`,
      );
    }
    return found[0]!;
  }

  /**
   * Stores one message in each receiver's inbox, all or none: a receiver without room for it
   * (see quota.ts) refuses the whole send before anything is written. `alsoWrite` runs in
   * the same transaction.
   */
  private async put(
    receivers: string[],
    m: Omit<NewMessage, "receiver">,
    alsoWrite?: () => void,
  ): Promise<void> {
    const inboxes = receivers.map((r) => this.mail.inbox(r));
    const share = shareOf(m.sender, m.reply === 1);
    for (const inbox of inboxes) this.makeRoom(inbox, share);
    for (const inbox of inboxes) inbox.reserved.add(share);
    let applied = false;
    try {
      await this.store.commit(
        () => {
          alsoWrite?.();
          return receivers.map((receiver) => this.store.insertMessage({ ...m, receiver }));
        },
        (seqs) => {
          applied = true;
          this.opts.observer?.stored(m.type, seqs.length);
          inboxes.forEach((inbox, i) => {
            inbox.reserved.remove(share);
            this.mail.add({
              seq: seqs[i]!,
              id: m.id,
              receiver: inbox.agentId,
              sender: m.sender,
              share,
              correlationId: m.correlation_id,
              expireAt: m.expire_time,
              leaseUntil: 0,
              deliveries: 0,
              holder: undefined,
              acking: false,
            });
          });
        },
      );
    } finally {
      if (!applied) for (const inbox of inboxes) inbox.reserved.remove(share);
    }
  }

  /** Refuses a message `inbox` has no room for (after dropping what expired in it). */
  private makeRoom(inbox: Inbox, share: string | undefined): void {
    const held = [inbox.stored, inbox.reserved];
    if (!refusal(this.opts, inbox.agentId, held, share)) return;
    const now = this.clock();
    const expired = [...inbox.items.values()].filter((p) => p.expireAt <= now && !p.acking);
    if (expired.length > 0) {
      this.mail.remove(
        inbox.agentId,
        expired.map((p) => p.id),
      );
      this.forget(expired);
    }
    const refused = refusal(this.opts, inbox.agentId, held, share);
    if (refused) throw refused;
  }

  private async ackIds(receiver: string, ids: string[]): Promise<number> {
    const found = this.mail.beginAck(receiver, ids);
    if (found.length === 0) return 0;
    try {
      await this.store.commit(
        () => this.store.deleteMessages(receiver, found),
        () => {
          this.mail.endAck(receiver, found, true);
          this.opts.observer?.acked(found.length);
        },
      );
    } catch (e) {
      if (!this.closing.signal.aborted) this.mail.endAck(receiver, found, false);
      throw e;
    }
    return found.length;
  }

  /** Deletes messages the mailroom found expired (best effort: a sweep catches leftovers). */
  private forget(expired: Pending[]): void {
    this.opts.observer?.expired(expired.length);
    const byReceiver = new Map<string, string[]>();
    for (const p of expired)
      (byReceiver.get(p.receiver) ?? byReceiver.set(p.receiver, []).get(p.receiver)!).push(p.id);
    for (const [receiver, ids] of byReceiver) {
      this.store
        .commit(() => this.store.deleteMessages(receiver, ids))
        .catch((e: unknown) => {
          this.opts.log.warn("could not delete expired messages", { receiver, error: e });
        });
    }
  }

  private load(p: Pending): Message | undefined {
    const row = this.store.message(p.receiver, p.id);
    if (!row) return undefined;
    this.opts.observer?.delivered(p.deliveries > 0);
    return create(MessageSchema, {
      id: row.id,
      sender: row.sender,
      receiver: row.receiver,
      topic: row.topic,
      type: row.type,
      payload: row.payload,
      correlationId: row.correlation_id,
      createTime: timestampFromMs(row.create_time),
      expireTime: timestampFromMs(row.expire_time),
    });
  }

  /** Waits for `p` at most `ms`, or until the call is cancelled or the Broker closes. */
  private async within<T>(
    p: Promise<T>,
    ms: number,
    signal: AbortSignal,
    onTimeout: () => Error,
  ): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    let cleanup = () => {};
    const stop = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(onTimeout()), ms);
      const cancelled = () =>
        reject(
          signal.reason instanceof Error ? signal.reason : new Error("the call was cancelled"),
        );
      const closed = () => reject(new BrokerClosedError());
      signal.addEventListener("abort", cancelled);
      this.closing.signal.addEventListener("abort", closed);
      if (this.closing.signal.aborted) closed();
      else if (signal.aborted) cancelled();
      cleanup = () => {
        signal.removeEventListener("abort", cancelled);
        this.closing.signal.removeEventListener("abort", closed);
      };
    });
    try {
      return await Promise.race([p, stop]);
    } finally {
      clearTimeout(timer);
      cleanup();
    }
  }
}

/**
 * Whose share of an inbox a message uses: its sender's, unless it is a reply or the
 * Orchestrator's message (those take the places kept for them).
 */
function shareOf(sender: string, isReply: boolean): string | undefined {
  return isReply || sender === ORCHESTRATOR_ID ? undefined : sender;
}
