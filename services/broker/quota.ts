// How full one inbox may get, and whose messages may fill it. Every agent has a share of
// another's inbox; agents together may fill it only up to a part kept short of the limit;
// the places left are for replies and the Orchestrator's messages. So no one agent, nor a
// flood of a topic, can keep the Orchestrator, a reply or another agent out.
import { AgentPlacesFullError, InboxFullError, SenderShareError } from "./errors.ts";

/** The Broker's inbox limits (see Config.broker), already checked against each other. */
export interface InboxLimits {
  /** Most unacknowledged messages one inbox holds, whoever sent them (broker.inbox_limit). */
  inboxLimit: number;
  /** Most one agent may have waiting in one inbox (broker.sender_share). */
  senderShare: number;
  /** Places only replies and the Orchestrator's messages may take (broker.reply_reserve). */
  replyReserve: number;
}

/**
 * Counts of one inbox's messages: all of them, those that use an agent's share, and how
 * many each agent has. `share` is the agent whose share a message uses, or undefined for
 * a reply or the Orchestrator's message (they use the reserved places).
 */
export class Occupancy {
  total = 0;
  agents = 0;
  private readonly bySender = new Map<string, number>();

  add(share: string | undefined): void {
    this.total++;
    if (share === undefined) return;
    this.agents++;
    this.bySender.set(share, this.of(share) + 1);
  }

  remove(share: string | undefined): void {
    this.total--;
    if (share === undefined) return;
    this.agents--;
    const n = this.of(share) - 1;
    if (n > 0) this.bySender.set(share, n);
    else this.bySender.delete(share);
  }

  /** How many of the messages use `sender`'s share. */
  of(sender: string): number {
    return this.bySender.get(sender) ?? 0;
  }
}

/**
 * Why one more message does not fit in `receiver`'s inbox, which holds `held` (stored
 * messages, and places taken by sends not yet written), or undefined when it fits. The
 * broadest limit reached is named: the inbox's, then the places agents may fill, then the
 * sender's share (raising a share does not help when the inbox is full).
 */
export function refusal(
  limits: InboxLimits,
  receiver: string,
  held: readonly Occupancy[],
  share: string | undefined,
): Error | undefined {
  const sum = (f: (o: Occupancy) => number) => held.reduce((n, o) => n + f(o), 0);
  if (sum((o) => o.total) >= limits.inboxLimit) {
    return new InboxFullError(receiver, limits.inboxLimit);
  }
  if (share === undefined) return undefined;
  const places = limits.inboxLimit - limits.replyReserve;
  if (sum((o) => o.agents) >= places) return new AgentPlacesFullError(receiver, places);
  if (sum((o) => o.of(share)) >= limits.senderShare) {
    return new SenderShareError(share, receiver, limits.senderShare);
  }
  return undefined;
}
