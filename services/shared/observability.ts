import type { Interceptor } from "@connectrpc/connect";
import type { Tracer } from "@opentelemetry/api";
import { collectDefaultMetrics, type Registry } from "prom-client";
import { metricsInterceptor, tracingInterceptor } from "./rpc-interceptors.ts";
import { createRpcMetrics } from "./rpc-metrics.ts";
import { enableTraceContext } from "./tracing.ts";

/**
 * A process's observability, made once at start and passed to every service it runs:
 * a tracer (undefined: tracing off), a Prometheus registry (undefined: metrics off), and the
 * interceptors that trace and count every RPC, server and client side.
 */
export interface Observability {
  tracer: Tracer | undefined;
  registry: Registry | undefined;
  serverInterceptors: Interceptor[];
  clientInterceptors: Interceptor[];
}

const LINT_FAILURES = [
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total",
];

/** What to observe with; both optional. */
export interface ObservabilityOptions {
  tracer?: Tracer | undefined;
  registry?: Registry | undefined;
  /** Also export the process's own metrics (CPU, memory, event loop, GC). Default true. */
  processMetrics?: boolean;
}

/** Builds the interceptors for a tracer and a registry (each registered once per process). */
export function createObservability(opts: ObservabilityOptions): Observability {
  const serverInterceptors: Interceptor[] = [];
  const clientInterceptors: Interceptor[] = [];
  if (opts.tracer) {
    enableTraceContext();
    serverInterceptors.push(tracingInterceptor(opts.tracer, "server"));
    clientInterceptors.push(tracingInterceptor(opts.tracer, "client"));
  }
  if (opts.registry) {
    const rpc = createRpcMetrics(opts.registry);
    serverInterceptors.push(metricsInterceptor(rpc, "server"));
    clientInterceptors.push(metricsInterceptor(rpc, "client"));
    if (opts.processMetrics ?? true) {
      collectDefaultMetrics({ register: opts.registry });
      // Gauges that prom-client names *_total, against Prometheus' conventions (promtool says so).
      for (const name of LINT_FAILURES) opts.registry.removeSingleMetric(name);
    }
  }
  return {
    tracer: opts.tracer,
    registry: opts.registry,
    serverInterceptors,
    clientInterceptors,
  };
}
