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

/** A receiver's inbox holds as many unacknowledged messages as it may. */
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

/** No open request with that correlation id was addressed to the caller. */
export class NoOpenRequestError extends Error {
  override name = "NoOpenRequestError";
}

/** The request was answered already. */
export class AlreadyAnsweredError extends Error {
  override name = "AlreadyAnsweredError";
}

/** The correlation id is taken by another open request. */
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
