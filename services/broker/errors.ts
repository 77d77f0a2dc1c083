import { Code, ConnectError } from "@connectrpc/connect";

/** Bad input: a missing or malformed field, a payload over the limit. */
export class InvalidInputError extends Error {
  override name = "InvalidInputError";
}

/** The caller may not do this as the identity it is (send as another, read another's inbox). */
export class NotAllowedError extends Error {
  override name = "NotAllowedError";
}

/** A receiver the Broker has never heard of. */
export class UnknownReceiverError extends Error {
  override name = "UnknownReceiverError";
  readonly receiver: string;
  constructor(receiver: string) {
    super(
      `agent "${receiver}" is not known to the Broker: an agent becomes known when its AgentHost registers it or when it first calls the Broker (list_agents shows who is known)`,
    );
    this.receiver = receiver;
  }
}

/** A receiver's inbox holds as many unacknowledged messages as it may, from everyone. */
export class InboxFullError extends Error {
  override name = "InboxFullError";
  readonly receiver: string;
  readonly limit: number;
  constructor(receiver: string, limit: number) {
    super(
      `the inbox of "${receiver}" is full: ${limit} messages wait unacknowledged (broker.inbox_limit); nothing was sent, try again once it has read some`,
    );
    this.receiver = receiver;
    this.limit = limit;
  }
}

/**
 * Agents' messages fill all of a receiver's inbox they may; the rest is kept for replies
 * and the Orchestrator's messages.
 */
export class AgentPlacesFullError extends Error {
  override name = "AgentPlacesFullError";
  readonly receiver: string;
  readonly places: number;
  constructor(receiver: string, places: number) {
    super(
      `the inbox of "${receiver}" holds ${places} unacknowledged messages from agents, all they may fill (broker.inbox_limit - broker.reply_reserve; the rest is kept for replies and the Orchestrator); nothing was sent, try again once it has read some`,
    );
    this.receiver = receiver;
    this.places = places;
  }
}

/** The sender has as many unacknowledged messages in the receiver's inbox as one agent may. */
export class SenderShareError extends Error {
  override name = "SenderShareError";
  readonly sender: string;
  readonly receiver: string;
  readonly share: number;
  constructor(sender: string, receiver: string, share: number) {
    super(
      `"${sender}" already has ${share} unacknowledged messages in the inbox of "${receiver}", its whole share (broker.sender_share); nothing was sent: wait until "${receiver}" has read some, or ask an operator to raise broker.sender_share`,
    );
    this.sender = sender;
    this.receiver = receiver;
    this.share = share;
  }
}

/** No open request with that correlation id was addressed to the caller. */
export class NoOpenRequestError extends Error {
  override name = "NoOpenRequestError";
}

/** The request was answered already. */
export class AlreadyAnsweredError extends Error {
  override name = "AlreadyAnsweredError";
}

/** The caller already waits for a reply with this correlation id. */
export class CorrelationInUseError extends Error {
  override name = "CorrelationInUseError";
}

/** No reply came within the request's timeout. */
export class RequestTimeoutError extends Error {
  override name = "RequestTimeoutError";
}

/** The Broker is shutting down. */
export class BrokerClosedError extends Error {
  override name = "BrokerClosedError";
  constructor() {
    super("the Broker is shutting down; call again once it is back (nothing acknowledged is lost)");
  }
}

const CODES: [new (...args: never[]) => Error, Code][] = [
  [InvalidInputError, Code.InvalidArgument],
  [NotAllowedError, Code.PermissionDenied],
  [UnknownReceiverError, Code.NotFound],
  [NoOpenRequestError, Code.NotFound],
  [InboxFullError, Code.ResourceExhausted],
  [AgentPlacesFullError, Code.ResourceExhausted],
  [SenderShareError, Code.ResourceExhausted],
  [AlreadyAnsweredError, Code.FailedPrecondition],
  [CorrelationInUseError, Code.AlreadyExists],
  [RequestTimeoutError, Code.DeadlineExceeded],
  [BrokerClosedError, Code.Unavailable],
];

/** Translates a Broker domain error into the one error type on the wire, keeping the cause. */
export function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  for (const [type, code] of CODES) {
    if (e instanceof type) return new ConnectError(e.message, code, undefined, undefined, e);
  }
  return ConnectError.from(e, Code.Internal);
}
