import { randomUUID } from "node:crypto";
import { MessageType, type Message } from "../../gen/conductor/v1/broker_pb.js";
import { ReplyWaiter } from "./consumers.ts";
import { assertOpen, type BrokerCore } from "./core.ts";
import type { Identity } from "./credentials.ts";
import type { Delivery } from "./delivery.ts";
import type { Directory } from "./directory.ts";
import {
  AlreadyAnsweredError,
  BrokerClosedError,
  CorrelationInUseError,
  InvalidInputError,
  NoOpenRequestError,
  RequestTimeoutError,
} from "./errors.ts";
import type { Postbox } from "./sending.ts";
import type { NewMessage, OpenRequest } from "./store.ts";
import { checkAgentId, checkCorrelationId, checkPayload, checkSelf } from "./validate.ts";

/** What Request asks: a task_request from `sender` to `receiver`, and how long to wait (ms). */
export interface RequestInput {
  sender: string;
  receiver: string;
  payload: string;
  correlationId: string;
  timeoutMs: number;
}

/**
 * Request/reply over the inboxes: a task_request opens a request (durable, until it expires),
 * only the agent asked may answer it, and the answer goes to whoever asked. A request's
 * correlation id is its requester's own: another agent's never matches it.
 */
export class Requests {
  private readonly core: BrokerCore;
  private readonly directory: Directory;
  private readonly postbox: Postbox;
  private readonly delivery: Delivery;

  constructor(core: BrokerCore, directory: Directory, postbox: Postbox, delivery: Delivery) {
    this.core = core;
    this.directory = directory;
    this.postbox = postbox;
    this.delivery = delivery;
  }

  /**
   * Sends a task_request and waits for the reply with its correlation id from the agent
   * asked; the reply is acknowledged when this returns it.
   */
  async request(
    caller: Identity,
    input: RequestInput,
    signal: AbortSignal,
  ): Promise<{ reply: Message; correlationId: string }> {
    const { opts, store, mail } = this.core;
    assertOpen(this.core);
    checkSelf(caller, input.sender, "send as");
    const receiver = this.directory.knownReceiver(input.receiver);
    if (receiver === caller.id) {
      throw new InvalidInputError("an agent cannot wait for a reply from itself");
    }
    checkPayload(input.payload, opts.maxPayloadBytes);
    if (input.timeoutMs < 0) throw new InvalidInputError("timeout_ms must not be negative");
    const timeoutMs = input.timeoutMs || opts.requestTimeoutMs;
    const correlationId = checkCorrelationId(input.correlationId) || randomUUID();
    await this.directory.see(caller);
    const inbox = mail.inbox(caller.id);
    for (const c of inbox.consumers) {
      if (c instanceof ReplyWaiter && c.correlationId === correlationId) {
        throw new CorrelationInUseError(
          `a Request with correlation id "${correlationId}" is already waiting for its reply`,
        );
      }
    }
    // The caller's own request with this id, if any: another agent's never matches.
    const open = store.openRequest(receiver, caller.id, correlationId);
    // Asked before with this id: wait for that answer, unless it was answered and read.
    const replyHere = [...inbox.items.values()].some(
      (p) => p.correlationId === correlationId && p.sender === receiver,
    );
    const send = !open || (open.answered === 1 && !replyHere);
    const waiter = new ReplyWaiter(correlationId, receiver);
    mail.attach(inbox, waiter); // a reply that is already here is taken at once
    try {
      if (send) {
        const now = this.core.clock();
        const m: Omit<NewMessage, "receiver"> = {
          id: randomUUID(),
          sender: caller.id,
          topic: "",
          type: MessageType.TASK_REQUEST,
          payload: input.payload,
          correlation_id: correlationId,
          create_time: now,
          expire_time: now + opts.ttlMs,
          reply: 0,
        };
        await this.postbox.put([receiver], m, () => {
          store.putOpenRequest({
            receiver,
            requester: caller.id,
            correlation_id: correlationId,
            expire_time: now + opts.ttlMs,
          });
        });
      }
      const got = await this.within(waiter.done, timeoutMs, signal, () => {
        return new RequestTimeoutError(
          `"${receiver}" did not reply within ${timeoutMs / 1000} s (correlation id "${correlationId}"); the request stays in its inbox until it expires, and a later reply waits in yours`,
        );
      });
      // A caller gone by now would never see the reply: leave it in the inbox, unacknowledged.
      if (signal.aborted) throw new Error("the call was cancelled", { cause: signal.reason });
      await this.delivery.ackIds(caller.id, [got.message.id]);
      return { reply: got.message, correlationId };
    } finally {
      mail.detach(inbox, waiter, false);
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
    assertOpen(this.core);
    const correlationId = checkCorrelationId(input.correlationId);
    if (!correlationId) {
      throw new InvalidInputError(
        "correlation_id is required: the correlation id of the task_request you answer",
      );
    }
    const requester = input.requester && checkAgentId(input.requester, "requester");
    checkPayload(input.payload, this.core.opts.maxPayloadBytes);
    await this.directory.see(caller);
    const open = this.openRequestFor(caller.id, correlationId, requester);
    const answered = () =>
      new AlreadyAnsweredError(
        `the request of "${open.requester}" with correlation id "${correlationId}" was answered already`,
      );
    if (open.answered) throw answered();
    const now = this.core.clock();
    const id = randomUUID();
    await this.postbox.put(
      [open.requester],
      {
        id,
        sender: caller.id,
        topic: "",
        type: input.isError ? MessageType.ERROR : MessageType.TASK_RESPONSE,
        payload: input.payload,
        correlation_id: correlationId,
        create_time: now,
        expire_time: now + this.core.opts.ttlMs,
        reply: 1,
      },
      () => {
        if (!this.core.store.markAnswered(caller.id, open.requester, correlationId)) {
          throw answered();
        }
      },
    );
    return { messageId: id, receiver: open.requester };
  }

  /**
   * The open request to `receiver` with this correlation id that a Reply answers: the only
   * one, or the one `requester` made. NOT_FOUND when there is none, INVALID_ARGUMENT naming
   * the requesters when several agents used the id and the caller named none.
   */
  private openRequestFor(receiver: string, correlationId: string, requester: string): OpenRequest {
    const all = this.core.store.openRequestsTo(receiver, correlationId);
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

  /** Waits for `p` at most `ms`, or until the call is cancelled or the Broker closes. */
  private async within<T>(
    p: Promise<T>,
    ms: number,
    signal: AbortSignal,
    onTimeout: () => Error,
  ): Promise<T> {
    const closing = this.core.closing;
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
      closing.addEventListener("abort", closed);
      if (closing.aborted) closed();
      else if (signal.aborted) cancelled();
      cleanup = () => {
        signal.removeEventListener("abort", cancelled);
        closing.removeEventListener("abort", closed);
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
