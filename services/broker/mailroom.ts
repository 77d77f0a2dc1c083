import type { Message } from "../../gen/conductor/v1/broker_pb.js";
import type { Logger } from "../shared/log.ts";
import { ReadersFullError } from "./errors.ts";
import { Occupancy } from "./quota.ts";

/**
 * Most readers one inbox has at once (Subscribe streams, waiting Receives, Requests waiting
 * for their reply): an agent's CLI has at most 16 MCP calls in flight (MAX_MCP_CALLS).
 */
export const MAX_READERS = 64;

/** A stored, unacknowledged message as the delivery logic sees it (its body stays on disk). */
export interface Pending {
  seq: number;
  id: string;
  receiver: string;
  sender: string;
  /** The agent whose share of the inbox it uses; undefined for a reply or the Orchestrator's. */
  share: string | undefined;
  correlationId: string;
  expireAt: number;
  /** Delivered and not acknowledged until then; 0 when free to deliver. */
  leaseUntil: number;
  deliveries: number;
  /** Who holds the lease. */
  holder: Consumer | undefined;
  /** An Ack is being written: never deliver it again. */
  acking: boolean;
}

/** Something that takes messages from one inbox: a stream, a waiting Receive or Request. */
export interface Consumer {
  /** How many more it takes now. */
  room(): number;
  /** For a Request: only the reply it waits for. */
  wants?(p: Pending): boolean;
  take(message: Message, p: Pending): void;
  /** A message it held is no longer its own (acknowledged, or its lease ran out). */
  release(p: Pending): void;
  /** Called after a dispatch round that gave it something. */
  settle?(): void;
}

/** One agent's inbox in memory: its messages in the order they were accepted, and consumers. */
export class Inbox {
  readonly agentId: string;
  /** By message id; a Map iterates in insertion order, which is acceptance order. */
  readonly items = new Map<string, Pending>();
  /** Who the messages in `items` are from (see quota.ts). */
  readonly stored = new Occupancy();
  /** Places taken by sends not yet committed, by whom. */
  readonly reserved = new Occupancy();
  readonly consumers = new Set<Consumer>();
  lastSeen: number | undefined;
  /** Where the next round-robin pick starts. */
  turn = 0;

  constructor(agentId: string) {
    this.agentId = agentId;
  }

  /** Adds a stored message. */
  store(p: Pending): void {
    if (this.items.has(p.id)) return;
    this.items.set(p.id, p);
    this.stored.add(p.share);
  }

  /** Removes a message (acknowledged or expired). */
  drop(p: Pending): void {
    if (this.items.delete(p.id)) this.stored.remove(p.share);
  }
}

/** What the mailroom needs from the Broker. */
export interface MailroomOptions {
  clock: () => number;
  ackTimeoutMs: number;
  /** Reads a message's body for delivery; undefined if it is gone. */
  load: (p: Pending) => Message | undefined;
  /** Messages found expired while delivering (the Broker removes them from disk). */
  onExpired: (expired: Pending[]) => void;
  log: Logger;
}

/** How soon delivery is tried again after a message could not be read from disk. */
const REREAD_MS = 1000;

/**
 * The in-memory side of delivery: which stored messages are free, leased to a consumer, or
 * due again. Messages of an inbox are offered in acceptance order (so one sender's messages
 * reach a receiver in the order they were sent); a lease not acknowledged within the ack
 * timeout ends and the message is offered again. Nothing here is durable: after a restart
 * every stored message is free again.
 */
export class Mailroom {
  private readonly inboxes = new Map<string, Inbox>();
  private readonly leased = new Set<Pending>();
  private readonly opts: MailroomOptions;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private closed = false;

  constructor(opts: MailroomOptions) {
    this.opts = opts;
  }

  inbox(agentId: string): Inbox {
    let inbox = this.inboxes.get(agentId);
    if (!inbox) {
      inbox = new Inbox(agentId);
      this.inboxes.set(agentId, inbox);
    }
    return inbox;
  }

  /** Inboxes that exist (an agent with an empty inbox may have none). */
  all(): IterableIterator<Inbox> {
    return this.inboxes.values();
  }

  /** A newly stored message; offered at once to a consumer that has room. */
  add(p: Pending, dispatch = true): void {
    const inbox = this.inbox(p.receiver);
    inbox.store(p);
    if (dispatch) this.dispatch(inbox);
  }

  /**
   * Marks the caller's messages that are waiting as being acknowledged (never delivered
   * again while the Ack is written); returns their ids.
   */
  beginAck(receiver: string, ids: string[]): string[] {
    const inbox = this.inboxes.get(receiver);
    if (!inbox) return [];
    const found: string[] = [];
    for (const id of new Set(ids)) {
      const p = inbox.items.get(id);
      if (p && !p.acking) {
        p.acking = true;
        found.push(id);
      }
    }
    return found;
  }

  /** The Ack is written (the messages go) or failed (they are offered again). */
  endAck(receiver: string, ids: string[], written: boolean): void {
    if (written) return this.remove(receiver, ids);
    const inbox = this.inboxes.get(receiver);
    if (!inbox) return;
    for (const id of ids) {
      const p = inbox.items.get(id);
      if (!p) continue;
      p.acking = false;
      this.unlease(p);
    }
    this.dispatch(inbox);
  }

  /** Drops messages (acknowledged or expired); their consumers get room again. */
  remove(receiver: string, ids: Iterable<string>): void {
    const inbox = this.inboxes.get(receiver);
    if (!inbox) return;
    for (const id of ids) {
      const p = inbox.items.get(id);
      if (!p) continue;
      inbox.drop(p);
      this.unlease(p);
    }
    this.dispatch(inbox);
  }

  /**
   * Adds a reader to the inbox; RESOURCE_EXHAUSTED (ReadersFullError) when it has
   * MAX_READERS already: each costs memory and every send to the inbox looks at all of them.
   */
  attach(inbox: Inbox, consumer: Consumer): void {
    if (inbox.consumers.size >= MAX_READERS) throw new ReadersFullError(inbox.agentId, MAX_READERS);
    inbox.consumers.add(consumer);
    this.dispatch(inbox);
  }

  /** Removes a consumer; with `releaseLeases` what it held is offered again at once. */
  detach(inbox: Inbox, consumer: Consumer, releaseLeases: boolean): void {
    inbox.consumers.delete(consumer);
    if (!releaseLeases) return;
    for (const p of inbox.items.values()) if (p.holder === consumer) this.unlease(p);
    this.dispatch(inbox);
  }

  /** Offers the inbox's free messages to its consumers, in order. */
  dispatch(inbox: Inbox): void {
    if (this.closed || inbox.consumers.size === 0) return;
    const filtered = [...inbox.consumers].filter((c) => c.wants !== undefined);
    const general = [...inbox.consumers].filter((c) => c.wants === undefined);
    // Nobody can take anything: leave the inbox unread (a stream at its prefetch limit would
    // otherwise make every send and ack to it read past all it holds).
    if (filtered.length === 0 && general.every((c) => c.room() <= 0)) return;
    const now = this.opts.clock();
    const expired: Pending[] = [];
    const given = new Set<Consumer>();
    for (const p of inbox.items.values()) {
      if (p.acking || p.leaseUntil > now) continue;
      if (p.expireAt <= now) {
        expired.push(p);
        continue;
      }
      let to = filtered.find((c) => c.room() > 0 && c.wants!(p));
      if (!to && general.length > 0) {
        // Round robin over the general consumers that have room.
        for (let i = 0; i < general.length && !to; i++) {
          const c = general[(inbox.turn + i) % general.length]!;
          if (c.room() > 0) {
            to = c;
            inbox.turn = (inbox.turn + i + 1) % general.length;
          }
        }
      }
      if (!to) {
        if (filtered.length === 0 && general.every((c) => c.room() <= 0)) break;
        continue;
      }
      let message: Message | undefined;
      try {
        message = this.opts.load(p);
      } catch (error) {
        // Never fatal (this may run from a timer): the message stays and is offered again.
        this.opts.log.warn("could not read a message to deliver it; trying again", {
          receiver: p.receiver,
          message_id: p.id,
          error,
        });
        setTimeout(() => this.dispatch(inbox), REREAD_MS).unref();
        break;
      }
      if (!message) {
        expired.push(p);
        continue;
      }
      p.deliveries++;
      p.leaseUntil = now + this.opts.ackTimeoutMs;
      p.holder = to;
      message.deliveryCount = p.deliveries;
      this.lease(p);
      to.take(message, p);
      given.add(to);
    }
    if (expired.length > 0) {
      for (const p of expired) {
        inbox.drop(p);
        this.unlease(p);
      }
      this.opts.onExpired(expired);
    }
    for (const c of given) c.settle?.();
  }

  /** Ends every lease timer and all delivery; for shutdown. */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private lease(p: Pending): void {
    this.leased.add(p);
    if (p.leaseUntil < this.timerAt) this.arm(p.leaseUntil);
  }

  private unlease(p: Pending): void {
    this.leased.delete(p);
    p.holder?.release(p);
    p.holder = undefined;
    p.leaseUntil = 0;
  }

  private arm(at: number): void {
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => this.expireLeases(), Math.max(0, at - this.opts.clock()));
    this.timer.unref();
  }

  /** Leases past the ack timeout end; their messages are offered again. */
  private expireLeases(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = this.opts.clock();
    const due = new Set<Inbox>();
    let next = Infinity;
    for (const p of this.leased) {
      if (p.acking) continue;
      if (p.leaseUntil <= now) {
        this.unlease(p);
        const inbox = this.inboxes.get(p.receiver);
        if (inbox) due.add(inbox);
      } else {
        next = Math.min(next, p.leaseUntil);
      }
    }
    if (next < Infinity) this.arm(next);
    for (const inbox of due) this.dispatch(inbox);
  }
}
