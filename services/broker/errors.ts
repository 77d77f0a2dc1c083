// The Broker's named domain errors. Each carries its gRPC code; the shared error edge
// (services/shared/rpc-interceptors.ts `errorEdge`) turns it into the status on the wire,
// keeping the cause, so no Broker code maps errors itself.
import { Code } from "@connectrpc/connect";
import { DomainError, withCode } from "../shared/errors.ts";

/** Bad input: a missing or malformed field, a payload over the limit. */
export class InvalidInputError extends withCode(Code.InvalidArgument) {}

/** The caller may not do this as the identity it is (send as another, read another's inbox). */
export class NotAllowedError extends withCode(Code.PermissionDenied) {}

/** A receiver the Broker has never heard of. */
export class UnknownReceiverError extends DomainError {
  readonly receiver: string;
  constructor(receiver: string) {
    super(
      `agent "${receiver}" is not known to the Broker: an agent becomes known when its AgentHost registers it or when it first calls the Broker (list_agents shows who is known)`,
      Code.NotFound,
    );
    this.receiver = receiver;
  }
}

/** A receiver's inbox holds as many unacknowledged messages as it may, from everyone. */
export class InboxFullError extends DomainError {
  readonly receiver: string;
  readonly limit: number;
  constructor(receiver: string, limit: number) {
    super(
      `the inbox of "${receiver}" is full: ${limit} messages wait unacknowledged (broker.inbox_limit); nothing was sent, try again once it has read some`,
      Code.ResourceExhausted,
    );
    this.receiver = receiver;
    this.limit = limit;
  }
}

/**
 * Agents' messages fill all of a receiver's inbox they may; the rest is kept for replies
 * and the Orchestrator's messages.
 */
export class AgentPlacesFullError extends DomainError {
  readonly receiver: string;
  readonly places: number;
  constructor(receiver: string, places: number) {
    super(
      `the inbox of "${receiver}" holds ${places} unacknowledged messages from agents, all they may fill (broker.inbox_limit - broker.reply_reserve; the rest is kept for replies and the Orchestrator); nothing was sent, try again once it has read some`,
      Code.ResourceExhausted,
    );
    this.receiver = receiver;
    this.places = places;
  }
}

/** An inbox has as many readers at once (streams, waiting receives, requests) as it may. */
export class ReadersFullError extends DomainError {
  readonly agentId: string;
  readonly limit: number;
  constructor(agentId: string, limit: number) {
    super(
      `the inbox of "${agentId}" already has ${limit} readers at once (Subscribe streams, waiting Receives and Requests awaiting their reply), all it may have; end one of them first`,
      Code.ResourceExhausted,
    );
    this.agentId = agentId;
    this.limit = limit;
  }
}

/** The sender has as many unacknowledged messages in the receiver's inbox as one agent may. */
export class SenderShareError extends DomainError {
  readonly sender: string;
  readonly receiver: string;
  readonly share: number;
  constructor(sender: string, receiver: string, share: number) {
    super(
      `"${sender}" already has ${share} unacknowledged messages in the inbox of "${receiver}", its whole share (broker.sender_share); nothing was sent: wait until "${receiver}" has read some, or ask an operator to raise broker.sender_share`,
      Code.ResourceExhausted,
    );
    this.sender = sender;
    this.receiver = receiver;
    this.share = share;
  }
}

/** No open request with that correlation id was addressed to the caller. */
export class NoOpenRequestError extends withCode(Code.NotFound) {}

/** The request was answered already. */
export class AlreadyAnsweredError extends withCode(Code.FailedPrecondition) {}

/** The caller already waits for a reply with this correlation id. */
export class CorrelationInUseError extends withCode(Code.AlreadyExists) {}

/** No reply came within the request's timeout. */
export class RequestTimeoutError extends withCode(Code.DeadlineExceeded) {}

/** The Broker is shutting down. */
export class BrokerClosedError extends DomainError {
  constructor() {
    super(
      "the Broker is shutting down; call again once it is back (nothing acknowledged is lost)",
      Code.Unavailable,
    );
  }
}
