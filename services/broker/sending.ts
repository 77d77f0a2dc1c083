import { timeOrderedId } from "../shared/ids.ts";
import { MessageType } from "../../gen/conductor/v1/broker_pb.js";
import { assertOpen, shareOf, type BrokerCore } from "./core.ts";
import type { Identity } from "./credentials.ts";
import type { Directory } from "./directory.ts";
import { InvalidInputError } from "./errors.ts";
import type { Expiry } from "./expiry.ts";
import type { Inbox } from "./mailroom.ts";
import { refusal } from "./quota.ts";
import type { NewMessage } from "./store.ts";
import { checkCorrelationId, checkPayload, checkSelf, checkTopic } from "./validate.ts";

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

/**
 * Storing messages: every message is in SQLite before Send answers, in the inbox of its
 * receiver or of every member of its topic but the sender, all or none. No sender fills
 * another's inbox (see quota.ts). A disk too full to take it refuses the whole send
 * (RESOURCE_EXHAUSTED naming the folder) and changes nothing.
 */
export class Postbox {
  private readonly core: BrokerCore;
  private readonly directory: Directory;
  private readonly expiry: Expiry;

  constructor(core: BrokerCore, directory: Directory, expiry: Expiry) {
    this.core = core;
    this.directory = directory;
    this.expiry = expiry;
  }

  /** Stores a message for one agent or every member of a topic; durable when it resolves. */
  async send(
    caller: Identity,
    input: SendInput,
  ): Promise<{ messageId: string; correlationId: string; deliveredTo: number }> {
    assertOpen(this.core);
    checkSelf(caller, input.sender, "send as");
    checkPayload(input.payload, this.core.opts.maxPayloadBytes);
    const ttlMs = this.ttl(input.ttlSeconds);
    const type = input.type === MessageType.UNSPECIFIED ? MessageType.COORDINATION : input.type;
    if (MessageType[type] === undefined) throw new InvalidInputError(`type ${type} is unknown`);
    let receivers: string[];
    let topic = "";
    const topics = this.directory.topics;
    if (input.topic !== undefined) {
      topic = checkTopic(input.topic);
      topics.checkMaySend(caller, topic);
      receivers = [...topics.membersOf(topic)].filter((a) => a !== caller.id);
    } else if (input.receiver !== undefined) {
      receivers = [this.directory.knownReceiver(input.receiver)];
    } else {
      throw new InvalidInputError("a message needs a receiver (an agent id) or a topic");
    }
    const id = timeOrderedId();
    const correlationId =
      checkCorrelationId(input.correlationId) || (type === MessageType.TASK_REQUEST ? id : "");
    const newcomer = this.directory.seeWithin(caller);
    const now = this.core.clock();
    const store = this.core.store;
    const alsoWrite = () => {
      newcomer?.write();
      if (type !== MessageType.TASK_REQUEST) return;
      for (const receiver of receivers) {
        store.putOpenRequest({
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
      alsoWrite,
      newcomer?.applied,
    );
    return { messageId: id, correlationId, deliveredTo: receivers.length };
  }

  /**
   * Stores one message in each receiver's inbox, all or none: a receiver without room for it
   * (see quota.ts) refuses the whole send before anything is written. `alsoWrite` runs in
   * the same transaction, `alsoApplied` once it is committed.
   */
  async put(
    receivers: string[],
    m: Omit<NewMessage, "receiver">,
    alsoWrite?: () => void,
    alsoApplied?: () => void,
  ): Promise<void> {
    const { mail, store, opts } = this.core;
    const inboxes = receivers.map((r) => mail.inbox(r));
    const share = shareOf(m.sender, m.reply === 1);
    for (const inbox of inboxes) this.makeRoom(inbox, share);
    for (const inbox of inboxes) inbox.reserved.add(share);
    let applied = false;
    try {
      await store.commit(
        () => {
          alsoWrite?.();
          return receivers.map((receiver) => store.insertMessage({ ...m, receiver }));
        },
        (seqs) => {
          applied = true;
          alsoApplied?.();
          opts.observer?.stored(m.type, seqs.length);
          inboxes.forEach((inbox, i) => {
            inbox.reserved.remove(share);
            mail.add({
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
    const opts = this.core.opts;
    if (!refusal(opts, inbox.agentId, held, share)) return;
    const now = this.core.clock();
    const expired = [...inbox.items.values()].filter((p) => p.expireAt <= now && !p.acking);
    if (expired.length > 0) {
      this.core.mail.remove(
        inbox.agentId,
        expired.map((p) => p.id),
      );
      this.expiry.forget(expired);
    }
    const refused = refusal(opts, inbox.agentId, held, share);
    if (refused) throw refused;
  }

  private ttl(seconds: number): number {
    const ttlMs = this.core.opts.ttlMs;
    if (seconds < 0) throw new InvalidInputError("ttl_seconds must not be negative");
    if (seconds === 0) return ttlMs;
    if (seconds * 1000 > ttlMs) {
      throw new InvalidInputError(
        `ttl_seconds ${seconds} is over the Broker's limit of ${ttlMs / 1000} (broker.ttl_seconds)`,
      );
    }
    return seconds * 1000;
  }
}
