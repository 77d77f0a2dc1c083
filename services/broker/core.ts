// What the Broker's parts (sending, delivery, requests, expiry, the directory) share.
import type { Logger } from "../shared/log.ts";
import { ORCHESTRATOR_ID } from "./credentials.ts";
import { BrokerClosedError } from "./errors.ts";
import type { Mailroom } from "./mailroom.ts";
import type { BrokerObserver } from "./metrics.ts";
import type { InboxLimits } from "./quota.ts";
import type { BrokerStore } from "./store.ts";

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

/** The state every part of one Broker works on; made once, by the Broker. */
export interface BrokerCore {
  readonly opts: BrokerOptions;
  readonly clock: () => number;
  readonly store: BrokerStore;
  readonly mail: Mailroom;
  /** Aborted when the Broker closes: streams and waits end, new calls are refused. */
  readonly closing: AbortSignal;
}

/** Refuses a call once the Broker is closing (UNAVAILABLE: call again once it is back). */
export function assertOpen(core: BrokerCore): void {
  if (core.closing.aborted) throw new BrokerClosedError();
}

/**
 * Whose share of an inbox a message uses: its sender's, unless it is a reply or the
 * Orchestrator's message (those take the places kept for them).
 */
export function shareOf(sender: string, isReply: boolean): string | undefined {
  return isReply || sender === ORCHESTRATOR_ID ? undefined : sender;
}
