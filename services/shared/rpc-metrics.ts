import { Counter, Histogram, type Registry } from "prom-client";

type RpcLabel = "service" | "method" | "rpc_type" | "code";

/** RPC counts and latencies, server and client side, registered on one process's registry. */
export interface RpcMetrics {
  serverHandled: Counter<RpcLabel>;
  serverSeconds: Histogram<RpcLabel>;
  clientHandled: Counter<RpcLabel>;
  clientSeconds: Histogram<RpcLabel>;
}

/** Latency buckets: unary calls take milliseconds, streams (RunTask, WatchTask) minutes. */
const BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
];
const LABELS: RpcLabel[] = ["service", "method", "rpc_type", "code"];

/** Registers the RPC metrics on `registry` (once per registry). */
export function createRpcMetrics(registry: Registry): RpcMetrics {
  const registers = [registry];
  return {
    serverHandled: new Counter({
      name: "conductor_rpc_server_handled_total",
      help: "RPCs completed by this process's servers, by service, method and gRPC status code.",
      labelNames: LABELS,
      registers,
    }),
    serverSeconds: new Histogram({
      name: "conductor_rpc_server_handling_seconds",
      help: "Time from receiving an RPC to its end (a stream's end for streams), server side.",
      labelNames: LABELS,
      buckets: BUCKETS,
      registers,
    }),
    clientHandled: new Counter({
      name: "conductor_rpc_client_handled_total",
      help: "RPCs this process made to other Conductor services, by service, method and gRPC status code.",
      labelNames: LABELS,
      registers,
    }),
    clientSeconds: new Histogram({
      name: "conductor_rpc_client_handling_seconds",
      help: "Time from starting an RPC to its end (a stream's end for streams), client side.",
      labelNames: LABELS,
      buckets: BUCKETS,
      registers,
    }),
  };
}
