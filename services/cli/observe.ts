import { Registry } from "prom-client";
import { envName, type Config } from "../shared/config.ts";
import { metricsPortKey } from "./commands.ts";
import { conductorVersion } from "../shared/version.ts";
import type { Logger } from "../shared/log.ts";
import { serveMetrics, type MetricsServer } from "../shared/metrics-server.ts";
import { createObservability, type Observability } from "../shared/observability.ts";
import { tracingSettingsFromEnv } from "../shared/otel-env.ts";
import { createTracing } from "../shared/tracing.ts";

/** A serving process's observability and its /metrics endpoint (url undefined when off). */
export interface ProcessObservability {
  obs: Observability;
  metricsUrl: string | undefined;
  /** Closes /metrics and flushes the spans still buffered. */
  stop(): Promise<void>;
}

/**
 * Sets up what `conductor up|orchestrator|agent-host` observes with: one Prometheus registry
 * and one /metrics endpoint for the whole process (so `up` serves both services on one), and
 * tracing as the OTEL_* variables in `env` configure it.
 */
export async function startObservability(
  command: string,
  config: Config,
  env: Record<string, string | undefined>,
  log: Logger,
): Promise<ProcessObservability> {
  const o = config.observability;
  const key = metricsPortKey(command);
  const port = o[key.slice("observability.".length) as MetricsPortField];
  const settings = tracingSettingsFromEnv(env);
  const tracing = createTracing(settings, {
    nodeId: config.orchestrator.node_id,
    version: conductorVersion(),
  });
  const registry = port >= 0 ? new Registry() : undefined;
  let server: MetricsServer | undefined;
  if (registry) {
    try {
      server = await serveMetrics(registry, o.metrics_host, port);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EADDRINUSE") throw e;
      throw new Error(
        `cannot serve /metrics: port ${port} on ${o.metrics_host} is in use (${key}; another Conductor?). ` +
          `Choose another with --metrics-port N or ${envName(key)}=N (0 picks a free port, -1 turns /metrics off).`,
        { cause: e },
      );
    }
  }
  if (tracing)
    log.info("exporting traces", { exporters: settings.exporters, url: settings.otlp.url });
  return {
    obs: createObservability({ tracer: tracing?.tracer, registry }),
    metricsUrl: server?.url,
    async stop() {
      await server?.close();
      await tracing?.shutdown();
    },
  };
}

type MetricsPortField = "metrics_port" | "agent_host_metrics_port" | "broker_metrics_port";
