// Standard gRPC health checking (grpc.health.v1) for every Conductor server,
// so grpc_health_probe, load balancers and `buf curl` can ask "are you up?".
import { ConnectError, Code } from "@connectrpc/connect";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";

/** The statuses a service can be put in; "unknown" is simply "never set". */
export type HealthStatus = "SERVING" | "NOT_SERVING";

/** Called with (service, status) whenever a status changes. */
export type HealthListener = (service: string, status: HealthStatus) => void;

/**
 * In-memory table of per-service serving status. Servers flip entries as
 * they start, drain or lose a dependency; Check/List/Watch read from here.
 * The empty name "" is the overall server status and starts as SERVING
 * (like grpc-go), so a bare `Health/Check {}` answers as soon as we listen.
 */
export class HealthRegistry {
  readonly #statuses = new Map<string, HealthStatus>([["", "SERVING"]]);
  readonly #listeners = new Set<HealthListener>();

  /** Set a status; listeners are told only when it actually changes. */
  set(service: string, status: HealthStatus): void {
    if (this.#statuses.get(service) === status) return;
    this.#statuses.set(service, status);
    for (const listener of [...this.#listeners]) listener(service, status);
  }

  /** Current status, or undefined if the service was never registered. */
  get(service: string): HealthStatus | undefined {
    return this.#statuses.get(service);
  }

  /** Snapshot of every known service and its status. */
  entries(): [string, HealthStatus][] {
    return [...this.#statuses];
  }

  /** Mark everything NOT_SERVING, e.g. at the start of a graceful shutdown. */
  shutdown(): void {
    for (const service of [...this.#statuses.keys()]) this.set(service, "NOT_SERVING");
  }

  /** Subscribe to changes; returns the unsubscribe function. */
  subscribe(listener: HealthListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Number of live subscriptions; lets tests prove Watch cleans up. */
  get listenerCount(): number {
    return this.#listeners.size;
  }
}

function toProto(status: HealthStatus | undefined): HealthCheckResponse_ServingStatus {
  if (status === undefined) return HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN;
  return status === "SERVING"
    ? HealthCheckResponse_ServingStatus.SERVING
    : HealthCheckResponse_ServingStatus.NOT_SERVING;
}

/**
 * Per the health protocol: send the current status at once, then one message
 * per change (SERVICE_UNKNOWN for unregistered names — that is not an error
 * here, the service may appear later), until the call ends.
 */
async function* watch(health: HealthRegistry, service: string, signal: AbortSignal) {
  const pending: HealthStatus[] = [];
  let wake: (() => void) | undefined;
  const unsubscribe = health.subscribe((name, status) => {
    if (name !== service) return;
    pending.push(status);
    wake?.();
  });
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort);
  try {
    let last = toProto(health.get(service));
    yield { status: last };
    while (!signal.aborted) {
      const next = pending.shift();
      if (next === undefined) {
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
        continue;
      }
      if (toProto(next) === last) continue;
      last = toProto(next);
      yield { status: last };
    }
  } finally {
    unsubscribe();
    signal.removeEventListener("abort", onAbort);
  }
}

/** Mount grpc.health.v1.Health on a router, backed by the given registry. */
export function registerHealth(router: ConnectRouter, health: HealthRegistry): void {
  router.service(Health, {
    check(req) {
      const status = health.get(req.service);
      if (status === undefined) {
        throw new ConnectError(`unknown service ${JSON.stringify(req.service)}`, Code.NotFound);
      }
      return { status: toProto(status) };
    },
    list() {
      const statuses = Object.fromEntries(
        health.entries().map(([name, status]) => [name, { status: toProto(status) }]),
      );
      return { statuses };
    },
    watch(req, ctx: HandlerContext) {
      return watch(health, req.service, ctx.signal);
    },
  });
}
