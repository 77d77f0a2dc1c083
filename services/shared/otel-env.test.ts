import { describe, expect, it } from "vitest";
import { ConfigError } from "./config.ts";
import { tracingSettingsFromEnv } from "./otel-env.ts";
import { createTracing } from "./tracing.ts";

describe("tracing settings from the OTEL_* variables", () => {
  it("are off when nothing asks for an exporter: no tracer at all", () => {
    expect(tracingSettingsFromEnv({}).exporters).toEqual([]);
    expect(tracingSettingsFromEnv({ OTEL_SERVICE_NAME: "x" }).exporters).toEqual([]);
    const identity = { nodeId: "n", version: "0" };
    expect(createTracing(tracingSettingsFromEnv({}), identity)).toBeUndefined();
  });

  it("export over OTLP to the endpoint, appending /v1/traces to the base one", () => {
    const s = tracingSettingsFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/" });
    expect(s.exporters).toEqual(["otlp"]);
    expect(s.otlp.url).toBe("http://collector:4318/v1/traces");
    const t = tracingSettingsFromEnv({
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318",
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://tempo:4318/custom",
    });
    expect(t.otlp.url).toBe("http://tempo:4318/custom");
    expect(tracingSettingsFromEnv({ OTEL_TRACES_EXPORTER: "otlp" }).otlp.url).toBe(
      "http://localhost:4318/v1/traces",
    );
  });

  it("honour none, OTEL_SDK_DISABLED, headers, sampler, resource attributes and batching", () => {
    const base = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" };
    expect(tracingSettingsFromEnv({ ...base, OTEL_TRACES_EXPORTER: "none" }).exporters).toEqual([]);
    expect(tracingSettingsFromEnv({ ...base, OTEL_SDK_DISABLED: "true" }).exporters).toEqual([]);
    const s = tracingSettingsFromEnv({
      ...base,
      OTEL_TRACES_EXPORTER: "otlp,console",
      OTEL_EXPORTER_OTLP_HEADERS: "authorization=Bearer%20abc, x-tenant=t1",
      OTEL_EXPORTER_OTLP_TRACES_HEADERS: "x-tenant=t2",
      OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "0.25",
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=prod,team=platform",
      OTEL_BSP_SCHEDULE_DELAY: "200",
      OTEL_EXPORTER_OTLP_COMPRESSION: "gzip",
    });
    expect(s.exporters).toEqual(["otlp", "console"]);
    expect(s.otlp.headers).toEqual({ authorization: "Bearer abc", "x-tenant": "t2" });
    expect(s.sampler).toEqual({ name: "parentbased_traceidratio", ratio: 0.25 });
    expect(s.resourceAttributes).toEqual({ "deployment.environment": "prod", team: "platform" });
    expect(s.batch.scheduledDelayMillis).toBe(200);
    expect(s.otlp.compression).toBe("gzip");
  });

  it("refuse what they cannot do, naming the variable", () => {
    const bad: [Record<string, string>, RegExp][] = [
      [{ OTEL_TRACES_EXPORTER: "zipkin" }, /OTEL_TRACES_EXPORTER: "zipkin" is not supported/],
      [
        { OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" },
        /OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" is not supported/,
      ],
      [{ OTEL_TRACES_SAMPLER: "sometimes" }, /OTEL_TRACES_SAMPLER: "sometimes"/],
      [{ OTEL_TRACES_SAMPLER_ARG: "2" }, /OTEL_TRACES_SAMPLER_ARG: 2 is not between 0 and 1/],
      [
        { OTEL_BSP_MAX_QUEUE_SIZE: "lots" },
        /OTEL_BSP_MAX_QUEUE_SIZE: expected a non-negative number/,
      ],
      [
        { OTEL_RESOURCE_ATTRIBUTES: "novalue" },
        /OTEL_RESOURCE_ATTRIBUTES: "novalue" is not key=value/,
      ],
    ];
    for (const [env, message] of bad) {
      expect(() => tracingSettingsFromEnv(env)).toThrow(ConfigError);
      expect(() => tracingSettingsFromEnv(env)).toThrow(message);
    }
  });
});
