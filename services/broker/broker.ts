import type { BrokerAgent, Message } from "../../gen/conductor/v1/broker_pb.js";
import { shareOf, type BrokerCore, type BrokerOptions } from "./core.ts";
import type { Identity } from "./credentials.ts";
import { Delivery } from "./delivery.ts";
import { Directory } from "./directory.ts";
import { Expiry } from "./expiry.ts";
import { Mailroom } from "./mailroom.ts";
import { Requests, type RequestInput } from "./requests.ts";
import { Postbox, type SendInput } from "./sending.ts";
import { BrokerStore } from "./store.ts";

export type { BrokerOptions } from "./core.ts";
export type { SendInput } from "./sending.ts";

/**
 * Messages between agents (and the Orchestrator), durable and at least once. Every message
 * is in SQLite before Send answers and stays there until its receiver acknowledges it or it
 * expires; the Mailroom decides, in memory, what is delivered to whom and when it is due
 * again. This wires the parts, each in its own module: sending (Postbox), delivery, request
 * and reply, expiry, and the directory of agents and topics.
 */
export class Broker {
  readonly store: BrokerStore;
  private readonly core: BrokerCore;
  private readonly closing = new AbortController();
  private readonly directory: Directory;
  private readonly expiry: Expiry;
  private readonly postbox: Postbox;
  private readonly delivery: Delivery;
  private readonly requests: Requests;

  constructor(opts: BrokerOptions) {
    const clock = opts.clock ?? Date.now;
    this.store = new BrokerStore(opts.dataDir);
    const mail = new Mailroom({
      clock,
      ackTimeoutMs: opts.ackTimeoutMs,
      load: (p) => this.delivery.load(p),
      onExpired: (expired) => this.expiry.forget(expired),
      log: opts.log,
    });
    this.core = { opts, clock, store: this.store, mail, closing: this.closing.signal };
    this.directory = new Directory(this.core);
    this.expiry = new Expiry(this.core);
    this.postbox = new Postbox(this.core, this.directory, this.expiry);
    this.delivery = new Delivery(this.core, this.directory, this.expiry);
    this.requests = new Requests(this.core, this.directory, this.postbox, this.delivery);
    let restored = 0;
    for (const row of this.store.allMessages()) {
      restored++;
      const share = shareOf(row.sender, row.reply === 1);
      mail.add(
        {
          seq: row.seq,
          id: row.id,
          receiver: row.receiver,
          sender: row.sender,
          share,
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
    const agents = this.directory.agents;
    opts.log.info("broker ready", { waiting_messages: restored, agents });
  }

  /** Stores a message for one agent or every member of a topic; durable when it resolves. */
  send(caller: Identity, input: SendInput) {
    return this.postbox.send(caller, input);
  }

  /** The caller's inbox as a stream (see Delivery.subscribe). */
  subscribe(
    caller: Identity,
    input: { agentId: string; topics: string[]; prefetch: number },
    signal: AbortSignal,
  ): Promise<AsyncIterable<Message>> {
    return this.delivery.subscribe(caller, input, signal);
  }

  /** Up to `maxMessages` waiting messages, waiting up to `waitMs` for the first. */
  receive(
    caller: Identity,
    input: { agentId: string; topics: string[]; maxMessages: number; waitMs: number },
    signal: AbortSignal,
  ): Promise<Message[]> {
    return this.delivery.receive(caller, input, signal);
  }

  /** Removes delivered messages of the caller's inbox for good; returns how many were there. */
  ack(caller: Identity, ids: string[]): Promise<number> {
    return this.delivery.ack(caller, ids);
  }

  /** Sends a task_request and waits for its reply (see Requests.request). */
  request(
    caller: Identity,
    input: RequestInput,
    signal: AbortSignal,
  ): Promise<{ reply: Message; correlationId: string }> {
    return this.requests.request(caller, input, signal);
  }

  /** Answers a task_request the caller received (see Requests.reply). */
  reply(
    caller: Identity,
    input: { correlationId: string; payload: string; isError: boolean; requester: string },
  ): Promise<{ messageId: string; receiver: string }> {
    return this.requests.reply(caller, input);
  }

  /** Leaves topics; the Orchestrator may take any agent out of topics. */
  unsubscribe(caller: Identity, input: { topics: string[]; agentId: string }): Promise<void> {
    return this.directory.unsubscribe(caller, input);
  }

  /** Every identity messages can be sent to, with its inbox depth and topics. */
  listAgents(caller: Identity): Promise<BrokerAgent[]> {
    return this.directory.list(caller);
  }

  /** Makes an agent known and a member of topics (Orchestrator only). */
  register(caller: Identity, agentId: string, topics: string[]): Promise<void> {
    return this.directory.register(caller, agentId, topics);
  }

  /** Messages stored and not yet acknowledged, across all inboxes. */
  waiting(): number {
    let n = 0;
    for (const inbox of this.core.mail.all()) n += inbox.items.size;
    return n;
  }

  /** Drops expired messages and requests from memory and disk; returns the messages dropped. */
  sweep(): Promise<number> {
    return this.expiry.sweep();
  }

  /** Ends every stream and wait, writes what is queued and closes the database. */
  close(): void {
    if (this.closing.signal.aborted) return;
    this.closing.abort();
    this.expiry.close();
    this.core.mail.close();
    this.store.close();
  }
}
