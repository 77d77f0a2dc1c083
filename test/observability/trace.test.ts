import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { SpanKind } from "@opentelemetry/api";
import {
  InMemorySpanExporter,
  SimpleSpanProcessor,
  TracerProvider,
  type ReadableSpan,
} from "@opentelemetry/sdk-trace";
import { createClient } from "@connectrpc/connect";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { startAgentHost, startOrchestrator, type Running } from "../../services/cli/services.ts";
import { loadConfig } from "../../services/shared/config.ts";
import { createLogger } from "../../services/shared/log.ts";
import { createObservability } from "../../services/shared/observability.ts";
import {
  ATTR_AGENT_ID,
  ATTR_NODE,
  ATTR_OUTCOME,
  ATTR_RUNTIME,
  ATTR_TASK_ATTEMPT,
  ATTR_TASK_ID,
  ATTR_TASK_TYPE,
  SPAN_CLI_RUN,
  SPAN_CONTAINER_EXEC,
  SPAN_TASK_QUEUED,
  SPAN_TASK_SCHEDULED,
} from "../../services/shared/tracing.ts";
import { unixTransport } from "../../services/shared/transport.ts";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import { scripted, spec, waitForEnd } from "../harness.ts";

const SUBMIT = "conductor.v1.OrchestratorService/SubmitTask";
const RUN_TASK = "conductor.v1.AgentHostService/RunTask";

/** The Orchestrator and an AgentHost in this process, tracing into memory. */
describe("a task's trace", () => {
  let model: FakeModel;
  let dir: string;
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });
  const logLines: Record<string, unknown>[] = [];
  let services: Running[] = [];
  let taskId = "";

  beforeAll(async () => {
    model = await startFakeModel();
    dir = mkdtempSync(path.join(tmpdir(), "conductor-trace-"));
    const config = loadConfig({
      cwd: dir,
      env: { ANTHROPIC_BASE_URL: model.url, ANTHROPIC_API_KEY: "sk-test-key" },
      flags: {
        "orchestrator.num_agents": 1,
        "orchestrator.node_id": "node-under-test",
        "communication.socket_dir": path.join(dir, "run"),
        "storage.data_dir": path.join(dir, "data"),
      },
    });
    const obs = createObservability({
      tracer: provider.getTracer("conductor"),
      registry: new Registry(),
      processMetrics: false,
    });
    const log = createLogger("info", {}, (line) =>
      logLines.push(JSON.parse(line) as Record<string, unknown>),
    );
    services.push(await startAgentHost(config, log, process.env["PATH"] ?? "/usr/bin:/bin", obs));
    services.push(await startOrchestrator(config, log, obs));

    // A client in its own right: its interceptors start the trace and send `traceparent`.
    const client = createClient(
      OrchestratorService,
      unixTransport(config.communication.socket_path, obs.clientInterceptors),
    );
    const { task } = await client.submitTask({
      spec: spec({ prompt: scripted([{ text: "traced" }]), type: "analysis" }),
    });
    taskId = task!.id;
    const ended = await waitForEnd(client, taskId);
    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
    // Stopping waits for every run to settle, so every span of the task has ended.
    for (const s of services.reverse()) await s.stop();
    services = [];
    await provider.forceFlush();
  });
  afterAll(async () => {
    for (const s of services.reverse()) await s.stop();
    await provider.shutdown();
    await model?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("is one trace from the client's SubmitTask to the CLI run, parent by parent", () => {
    const spans = exporter.getFinishedSpans();
    const submit = one(spans, SUBMIT, SpanKind.CLIENT);
    expect(submit.parentSpanContext).toBeUndefined();
    const traceId = submit.spanContext().traceId;
    const inTrace = spans.filter((s) => s.spanContext().traceId === traceId);

    const serverSubmit = one(inTrace, SUBMIT, SpanKind.SERVER);
    const queued = one(inTrace, SPAN_TASK_QUEUED);
    const scheduled = one(inTrace, SPAN_TASK_SCHEDULED);
    const runClient = one(inTrace, RUN_TASK, SpanKind.CLIENT);
    const runServer = one(inTrace, RUN_TASK, SpanKind.SERVER);
    const cliRun = one(inTrace, SPAN_CLI_RUN);
    const exec = one(inTrace, SPAN_CONTAINER_EXEC);

    expect(parentOf(serverSubmit)).toBe(submit.spanContext().spanId);
    expect(parentOf(queued)).toBe(serverSubmit.spanContext().spanId);
    expect(parentOf(scheduled)).toBe(serverSubmit.spanContext().spanId);
    expect(parentOf(runClient)).toBe(scheduled.spanContext().spanId);
    expect(parentOf(runServer)).toBe(runClient.spanContext().spanId);
    expect(parentOf(cliRun)).toBe(runServer.spanContext().spanId);
    expect(parentOf(exec)).toBe(cliRun.spanContext().spanId);

    // Phases in order; a server stream's span lasts until the stream's end. The CLI run's
    // starts in it and lasts until the run is gone, which may be after its outcome went out
    // on that stream (at its result line: the CLI's own exit comes after).
    expect(ns(queued.endTime)).toBeLessThanOrEqual(ns(scheduled.startTime) + 1e6);
    expect(ns(runServer.startTime)).toBeGreaterThanOrEqual(ns(runClient.startTime));
    expect(ns(cliRun.startTime)).toBeGreaterThanOrEqual(ns(runServer.startTime));
    expect(ns(cliRun.startTime)).toBeLessThanOrEqual(ns(runServer.endTime));
    expect(ns(exec.startTime)).toBeGreaterThanOrEqual(ns(cliRun.startTime));
    expect(ns(runClient.endTime)).toBeGreaterThanOrEqual(ns(runServer.endTime) - 1e6);
    expect(ns(scheduled.endTime)).toBeGreaterThanOrEqual(ns(runClient.endTime));

    for (const s of [queued, scheduled, cliRun, exec])
      expect(s.attributes[ATTR_TASK_ID]).toBe(taskId);
    expect(queued.attributes).toMatchObject({
      [ATTR_TASK_TYPE]: "analysis",
      [ATTR_OUTCOME]: "scheduled",
      [ATTR_AGENT_ID]: "agent-1",
    });
    expect(scheduled.attributes).toMatchObject({
      [ATTR_TASK_TYPE]: "analysis",
      [ATTR_TASK_ATTEMPT]: 1,
      [ATTR_AGENT_ID]: "agent-1",
      [ATTR_NODE]: "node-under-test",
      [ATTR_OUTCOME]: "succeeded",
    });
    expect(cliRun.attributes).toMatchObject({
      [ATTR_AGENT_ID]: "agent-1",
      [ATTR_NODE]: "node-under-test",
      [ATTR_OUTCOME]: "succeeded",
    });
    expect(exec.attributes).toMatchObject({
      [ATTR_AGENT_ID]: "agent-1",
      [ATTR_NODE]: "node-under-test",
      [ATTR_RUNTIME]: "process",
      [ATTR_OUTCOME]: "started",
    });
    expect(runServer.attributes).toMatchObject({
      "rpc.system.name": "grpc",
      "rpc.method": RUN_TASK,
      "rpc.status_code": "OK",
    });
  });

  it("writes log lines that carry the trace and span of the work they describe", () => {
    const traceId = one(exporter.getFinishedSpans(), SUBMIT, SpanKind.CLIENT).spanContext().traceId;
    const ended = logLines.find((l) => l["msg"] === "task ended" && l["task_id"] === taskId);
    expect(ended?.["trace_id"]).toBe(traceId);
    expect(ended?.["span_id"]).toMatch(/^[0-9a-f]{16}$/);
    const spanIds = new Set(
      exporter
        .getFinishedSpans()
        .filter((s) => s.spanContext().traceId === traceId)
        .map((s) => s.spanContext().spanId),
    );
    expect(spanIds.has(ended!["span_id"] as string)).toBe(true);
    // Lines outside any span (start-up) carry none.
    const serving = logLines.find((l) => l["msg"] === "orchestrator serving");
    expect(serving).toBeDefined();
    expect(serving).not.toHaveProperty("trace_id");
  });
});

function one(spans: ReadableSpan[], name: string, kind?: SpanKind): ReadableSpan {
  const found = spans.filter((s) => s.name === name && (kind === undefined || s.kind === kind));
  expect(
    found.map((s) => s.name),
    `exactly one span ${name}`,
  ).toHaveLength(1);
  return found[0]!;
}

function parentOf(s: ReadableSpan): string | undefined {
  return s.parentSpanContext?.spanId;
}

function ns(t: [number, number]): number {
  return t[0] * 1e9 + t[1];
}
