import {
  context,
  propagation,
  ROOT_CONTEXT,
  trace,
  type Context,
  type Tracer,
} from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { CompressionAlgorithm } from "@opentelemetry/otlp-exporter-base";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type Sampler,
  type SpanExporter,
} from "@opentelemetry/sdk-trace";
import {
  ATTR_SERVICE_INSTANCE_ID,
  ATTR_SERVICE_NAME,
  ATTR_SERVICE_VERSION,
} from "@opentelemetry/semantic-conventions";
import type { SamplerSetting, TracingSettings } from "./otel-env.ts";

/** Span attribute names Conductor sets on its own spans (besides the semantic conventions). */
export const ATTR_TASK_ID = "conductor.task.id";
export const ATTR_TASK_TYPE = "conductor.task.type";
export const ATTR_TASK_PRIORITY = "conductor.task.priority";
export const ATTR_TASK_ATTEMPT = "conductor.task.attempt";
export const ATTR_AGENT_ID = "conductor.agent.id";
export const ATTR_NODE = "conductor.node";
export const ATTR_RUNTIME = "conductor.runtime";
/** How a phase ended: a task state in lower case (succeeded, failed, …) or scheduled/cancelled. */
export const ATTR_OUTCOME = "conductor.outcome";

/** Span names of the task phases. */
export const SPAN_TASK_QUEUED = "conductor.task.queued";
export const SPAN_TASK_SCHEDULED = "conductor.task.scheduled";
export const SPAN_CLI_RUN = "conductor.cli.run";
export const SPAN_CONTAINER_EXEC = "conductor.container.exec";

/** The instrumentation scope of every Conductor tracer. */
export const TRACER_NAME = "conductor";

/** A process's tracing: its tracer, and shutdown() that flushes what is still buffered. */
export interface Tracing {
  tracer: Tracer;
  shutdown(): Promise<void>;
}

/**
 * Makes the OpenTelemetry context machinery work: an AsyncLocalStorage context manager (so
 * the active span follows async code) and the W3C trace-context propagator (so `traceparent`
 * crosses service boundaries). Both are process-wide by OpenTelemetry's design and hold no
 * state of ours; calling this again changes nothing.
 */
export function enableTraceContext(): void {
  const manager = new AsyncLocalStorageContextManager().enable();
  if (!context.setGlobalContextManager(manager)) manager.disable(); // one was there already
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
}

/**
 * Builds the process's tracer from OTEL_* settings; undefined when no exporter is configured,
 * so that tracing is then entirely absent (no interceptors, no spans).
 */
export function createTracing(
  settings: TracingSettings,
  identity: { nodeId: string; version: string },
  extraExporters: SpanExporter[] = [],
): Tracing | undefined {
  const exporters: SpanExporter[] = [...extraExporters];
  for (const kind of settings.exporters) {
    if (kind === "console") exporters.push(new ConsoleSpanExporter());
    else
      exporters.push(
        new OTLPTraceExporter({
          url: settings.otlp.url,
          headers: settings.otlp.headers,
          timeoutMillis: settings.otlp.timeoutMs,
          compression:
            settings.otlp.compression === "gzip"
              ? CompressionAlgorithm.GZIP
              : CompressionAlgorithm.NONE,
        }),
      );
  }
  if (exporters.length === 0) return undefined;
  enableTraceContext();
  const provider = new TracerProvider({
    resource: resourceFromAttributes({
      [ATTR_SERVICE_NAME]: settings.serviceName,
      [ATTR_SERVICE_VERSION]: identity.version,
      [ATTR_SERVICE_INSTANCE_ID]: identity.nodeId,
      ...settings.resourceAttributes,
    }),
    sampler: sampler(settings.sampler),
    spanProcessors: exporters.map(
      (exporter) => new BatchSpanProcessor({ exporter, ...settings.batch }),
    ),
  });
  return {
    tracer: provider.getTracer(TRACER_NAME, identity.version),
    shutdown: () => provider.shutdown(),
  };
}

function sampler(s: SamplerSetting): Sampler {
  const ratio = new TraceIdRatioBasedSampler(s.ratio);
  switch (s.name) {
    case "always_on":
      return new AlwaysOnSampler();
    case "always_off":
      return new AlwaysOffSampler();
    case "traceidratio":
      return ratio;
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: ratio });
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
  }
}

/** The active context as a W3C `traceparent` value ("" when no span is active). */
export function currentTraceParent(): string {
  if (!trace.getSpanContext(context.active())) return "";
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier["traceparent"] ?? "";
}

/** A context whose parent is the span a stored `traceparent` names (root when empty). */
export function contextFromTraceParent(traceParent: string): Context {
  if (!traceParent) return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, { traceparent: traceParent });
}
