import { Code, ConnectError } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { MessageSchema, type Message } from "../../gen/conductor/v1/broker_pb.js";
import { StorageFull } from "../shared/errors.ts";
import { PullConsumer, StreamConsumer } from "./consumers.ts";
import { assertOpen, type BrokerCore } from "./core.ts";
import type { Identity } from "./credentials.ts";
import type { Directory } from "./directory.ts";
import { BrokerClosedError, InvalidInputError } from "./errors.ts";
import type { Expiry } from "./expiry.ts";
import type { Pending } from "./mailroom.ts";
import { checkSelf, checkTopics } from "./validate.ts";

const DEFAULT_PREFETCH = 64;
const MAX_PREFETCH = 1000;
const DEFAULT_RECEIVE = 10;
const MAX_RECEIVE = 100;
const MAX_WAIT_MS = 10 * 60_000;

/**
 * Handing stored messages to their receiver, by stream (Subscribe) or by pull (Receive),
 * and taking them out for good when acknowledged. The Mailroom decides what is due to whom.
 */
export class Delivery {
  private readonly core: BrokerCore;
  private readonly directory: Directory;
  private readonly expiry: Expiry;

  constructor(core: BrokerCore, directory: Directory, expiry: Expiry) {
    this.core = core;
    this.directory = directory;
    this.expiry = expiry;
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
    assertOpen(this.core);
    checkSelf(caller, input.agentId, "read the inbox of");
    const topics = checkTopics(input.topics);
    const prefetch = input.prefetch || DEFAULT_PREFETCH;
    if (prefetch < 0 || prefetch > MAX_PREFETCH) {
      throw new InvalidInputError(
        `prefetch must be between 0 (default ${DEFAULT_PREFETCH}) and ${MAX_PREFETCH}`,
      );
    }
    const join = this.directory.topics.toJoin(caller, topics);
    await this.directory.see(caller);
    await this.directory.join(caller.id, join);
    const { mail, closing } = this.core;
    const inbox = mail.inbox(caller.id);
    // The caller left while it was being set up: no reader is left behind for it.
    if (signal.aborted) throw new ConnectError("the Subscribe call was cancelled", Code.Canceled);
    const consumer = new StreamConsumer(prefetch);
    mail.attach(inbox, consumer); // first: it may refuse (too many readers)
    const end = () => consumer.queue.end();
    const fail = () => consumer.queue.fail(new BrokerClosedError());
    signal.addEventListener("abort", end);
    closing.addEventListener("abort", fail);
    if (closing.aborted) fail();
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
    assertOpen(this.core);
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
    const join = this.directory.topics.toJoin(caller, topics);
    await this.directory.see(caller);
    await this.directory.join(caller.id, join);
    const { mail, closing } = this.core;
    const inbox = mail.inbox(caller.id);
    const consumer = new PullConsumer(max);
    mail.attach(inbox, consumer);
    const settle = () => consumer.settle();
    const timer = setTimeout(settle, input.waitMs);
    signal.addEventListener("abort", settle);
    closing.addEventListener("abort", settle);
    if (signal.aborted || closing.aborted) settle();
    try {
      return await consumer.done;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", settle);
      closing.removeEventListener("abort", settle);
      mail.detach(inbox, consumer, false);
    }
  }

  /** Removes delivered messages of the caller's inbox for good; returns how many were there. */
  async ack(caller: Identity, ids: string[]): Promise<number> {
    assertOpen(this.core);
    await this.directory.see(caller);
    return this.ackIds(caller.id, ids);
  }

  /**
   * Takes acknowledged messages out of `receiver`'s inbox and off the disk. When the disk is
   * full the Ack still holds (they are never delivered again by this process) and the delete
   * is written once space returns (see Expiry).
   */
  async ackIds(receiver: string, ids: string[]): Promise<number> {
    const { mail, store, opts, closing } = this.core;
    const found = mail.beginAck(receiver, ids);
    if (found.length === 0) return 0;
    try {
      await store.commit(
        () => store.deleteMessages(receiver, found),
        () => {
          mail.endAck(receiver, found, true);
          opts.observer?.acked(found.length);
        },
      );
    } catch (e) {
      if (e instanceof StorageFull && !closing.aborted) {
        mail.endAck(receiver, found, true);
        opts.observer?.acked(found.length);
        this.expiry.deleteLater(receiver, found);
        return found.length;
      }
      if (!closing.aborted) mail.endAck(receiver, found, false);
      throw e;
    }
    return found.length;
  }

  /** A stored message's body, for the Mailroom to deliver; undefined when it is gone. */
  load(p: Pending): Message | undefined {
    const row = this.core.store.message(p.receiver, p.id);
    if (!row) return undefined;
    this.core.opts.observer?.delivered(p.deliveries > 0);
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
}
