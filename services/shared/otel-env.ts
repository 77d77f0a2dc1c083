import { ConfigError } from "./config.ts";

/** Where finished spans go. */
export type TraceExporterKind = "otlp" | "console";

/** The sampler named by OTEL_TRACES_SAMPLER (with OTEL_TRACES_SAMPLER_ARG for ratios). */
export interface SamplerSetting {
  name:
    | "always_on"
    | "always_off"
    | "traceidratio"
    | "parentbased_always_on"
    | "parentbased_always_off"
    | "parentbased_traceidratio";
  ratio: number;
}

/** Tracing as the standard OTEL_* variables configure it; `exporters` empty means off. */
export interface TracingSettings {
  exporters: TraceExporterKind[];
  serviceName: string;
  /** OTEL_RESOURCE_ATTRIBUTES, parsed. */
  resourceAttributes: Record<string, string>;
  sampler: SamplerSetting;
  otlp: {
    url: string;
    headers: Record<string, string>;
    timeoutMs: number;
    compression: "gzip" | "none";
  };
  batch: {
    scheduledDelayMillis: number;
    maxQueueSize: number;
    maxExportBatchSize: number;
    exportTimeoutMillis: number;
  };
}

const SAMPLERS = new Set<string>([
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio",
]);

/**
 * Reads the standard OpenTelemetry variables from `env` (passed in; nothing here reads
 * process.env). Traces are exported over OTLP (http/protobuf) when an OTLP endpoint is set or
 * OTEL_TRACES_EXPORTER names otlp; otherwise tracing is off and costs nothing.
 */
export function tracingSettingsFromEnv(env: Record<string, string | undefined>): TracingSettings {
  const get = (name: string) => env[name]?.trim() || undefined;
  const tracesEndpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
  const endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT");
  const named = get("OTEL_TRACES_EXPORTER")
    ?.split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  let exporters: TraceExporterKind[] = [];
  if (named) {
    for (const n of named) {
      if (n === "otlp" || n === "console") exporters.push(n);
      else if (n !== "none")
        throw new ConfigError(
          `OTEL_TRACES_EXPORTER: "${n}" is not supported; use otlp, console or none`,
        );
    }
    if (named.includes("none")) exporters = [];
  } else if (tracesEndpoint || endpoint) {
    exporters = ["otlp"];
  }
  if (get("OTEL_SDK_DISABLED")?.toLowerCase() === "true") exporters = [];

  const protocol =
    get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") ?? get("OTEL_EXPORTER_OTLP_PROTOCOL") ?? "";
  if (exporters.includes("otlp") && protocol && protocol !== "http/protobuf") {
    throw new ConfigError(
      `OTEL_EXPORTER_OTLP_PROTOCOL: "${protocol}" is not supported; Conductor exports http/protobuf (unset it or set http/protobuf)`,
    );
  }
  const url =
    tracesEndpoint ??
    (endpoint ? `${endpoint.replace(/\/+$/, "")}/v1/traces` : "http://localhost:4318/v1/traces");
  const compression =
    get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION") ?? get("OTEL_EXPORTER_OTLP_COMPRESSION") ?? "none";
  if (compression !== "gzip" && compression !== "none") {
    throw new ConfigError(`OTEL_EXPORTER_OTLP_COMPRESSION: "${compression}" is not gzip or none`);
  }

  const samplerName = get("OTEL_TRACES_SAMPLER") ?? "parentbased_always_on";
  if (!SAMPLERS.has(samplerName)) {
    throw new ConfigError(
      `OTEL_TRACES_SAMPLER: "${samplerName}" is not one of ${[...SAMPLERS].join(", ")}`,
    );
  }
  const ratio = number(env, "OTEL_TRACES_SAMPLER_ARG", 1);
  if (ratio < 0 || ratio > 1) {
    throw new ConfigError(`OTEL_TRACES_SAMPLER_ARG: ${ratio} is not between 0 and 1`);
  }

  return {
    exporters,
    serviceName: get("OTEL_SERVICE_NAME") ?? "conductor",
    resourceAttributes: keyValues(get("OTEL_RESOURCE_ATTRIBUTES"), "OTEL_RESOURCE_ATTRIBUTES"),
    sampler: { name: samplerName as SamplerSetting["name"], ratio },
    otlp: {
      url,
      headers: {
        ...keyValues(get("OTEL_EXPORTER_OTLP_HEADERS"), "OTEL_EXPORTER_OTLP_HEADERS"),
        ...keyValues(get("OTEL_EXPORTER_OTLP_TRACES_HEADERS"), "OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
      },
      timeoutMs: number(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        number(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000),
      ),
      compression,
    },
    batch: {
      scheduledDelayMillis: number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000),
      maxQueueSize: number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048),
      maxExportBatchSize: number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
      exportTimeoutMillis: number(env, "OTEL_BSP_EXPORT_TIMEOUT", 30_000),
    },
  };
}

function number(env: Record<string, string | undefined>, name: string, fallback: number): number {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) {
    throw new ConfigError(`${name}: expected a non-negative number, got "${raw}"`);
  }
  return n;
}

/** "k1=v1,k2=v2" with percent-encoded values (the W3C Baggage format OTEL_* lists use). */
function keyValues(raw: string | undefined, name: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!raw) return out;
  for (const pair of raw.split(",")) {
    if (!pair.trim()) continue;
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new ConfigError(`${name}: "${pair.trim()}" is not key=value`);
    try {
      out[pair.slice(0, eq).trim()] = decodeURIComponent(pair.slice(eq + 1).trim());
    } catch (cause) {
      throw new ConfigError(`${name}: "${pair.trim()}" is not percent-encoded properly`, {
        cause,
      });
    }
  }
  return out;
}
