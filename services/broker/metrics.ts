import { Counter, Gauge, type Registry } from "prom-client";
import { MessageType } from "../../gen/conductor/v1/broker_pb.js";

/** What the Broker reports as messages move; metrics (or nothing) behind it. */
export interface BrokerObserver {
  /** A message was stored in `inboxes` inboxes (one for a receiver, each member for a topic). */
  stored(type: MessageType, inboxes: number): void;
  /** A message was handed to a consumer; `again` when it had been delivered before. */
  delivered(again: boolean): void;
  acked(count: number): void;
  expired(count: number): void;
}

/**
 * Registers the Broker's Prometheus metrics on `registry` and returns the observer that
 * feeds them; `waiting` reads the number of unacknowledged messages when scraped.
 */
export function createBrokerMetrics(registry: Registry, waiting: () => number): BrokerObserver {
  const registers = [registry];
  const stored = new Counter({
    name: "conductor_broker_messages_stored_total",
    help: "Messages stored durably, one per inbox (a topic message counts once per member), by type.",
    labelNames: ["type"] as const,
    registers,
  });
  const deliveries = new Counter({
    name: "conductor_broker_deliveries_total",
    help: "Messages handed to a reader; attempt is first, or again after an ack timeout or a closed stream.",
    labelNames: ["attempt"] as const,
    registers,
  });
  const acked = new Counter({
    name: "conductor_broker_messages_acked_total",
    help: "Messages acknowledged by their receiver (and so removed).",
    registers,
  });
  const expired = new Counter({
    name: "conductor_broker_messages_expired_total",
    help: "Messages dropped unacknowledged because their TTL passed.",
    registers,
  });
  new Gauge({
    name: "conductor_broker_messages_waiting",
    help: "Messages stored and not yet acknowledged, across all inboxes.",
    registers,
    collect() {
      this.set(waiting());
    },
  });
  // One labelled child per type, found once (not by hashing its labels on every send).
  const storedOf = new Map<MessageType, Counter.Internal>();
  return {
    stored: (type, inboxes) => {
      let child = storedOf.get(type);
      if (!child) {
        child = stored.labels({ type: (MessageType[type] ?? String(type)).toLowerCase() });
        storedOf.set(type, child);
      }
      child.inc(inboxes);
    },
    delivered: (again) => deliveries.inc({ attempt: again ? "again" : "first" }),
    acked: (count) => acked.inc(count),
    expired: (count) => expired.inc(count),
  };
}
