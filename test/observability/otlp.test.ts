import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import { scripted, spec, startConductor, waitForEnd } from "../harness.ts";

/** An OTLP/HTTP receiver: keeps every export request's body and content type. */
async function startReceiver() {
  const requests: { path: string; type: string; body: Buffer }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      requests.push({
        path: req.url ?? "",
        type: req.headers["content-type"] ?? "",
        body: Buffer.concat(chunks),
      });
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** `conductor up` with OTEL_EXPORTER_OTLP_ENDPOINT set exports its spans over OTLP. */
describe("OTLP export configured by OTEL_* variables", () => {
  let model: FakeModel;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;

  beforeAll(async () => {
    model = await startFakeModel();
    receiver = await startReceiver();
  });
  afterAll(async () => {
    await receiver?.close();
    await model?.close();
  });

  it("sends the task's spans to the endpoint, and logs carry the same trace id", async () => {
    const conductor = await startConductor({
      agents: 1,
      modelUrl: model.url,
      env: {
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_SERVICE_NAME: "conductor-under-test",
        CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "info",
      },
    });
    let taskId: string;
    let stderr: string;
    try {
      const { task } = await conductor.client.submitTask({
        spec: spec({ prompt: scripted([{ text: "exported" }]) }),
      });
      taskId = task!.id;
      expect((await waitForEnd(conductor.client, taskId)).state).toBe(TaskState.SUCCEEDED);
    } finally {
      // SIGTERM: the process flushes its buffered spans before it exits.
      await conductor.close();
      stderr = conductor.processes.map((p) => p.stderr()).join("");
    }
    const traces = receiver.requests.filter((r) => r.path === "/v1/traces");
    expect(traces.length).toBeGreaterThan(0);
    expect(traces.every((r) => r.type === "application/x-protobuf")).toBe(true);
    const body = Buffer.concat(traces.map((r) => r.body));
    for (const text of [
      "conductor-under-test",
      taskId,
      "conductor.task.queued",
      "conductor.task.scheduled",
      "conductor.cli.run",
      "conductor.v1.AgentHostService/RunTask",
    ]) {
      expect(body.includes(text), `the export holds ${text}`).toBe(true);
    }
    const ended = stderr
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, string>)
      .find((l) => l["msg"] === "task ended" && l["task_id"] === taskId);
    expect(ended?.["trace_id"]).toMatch(/^[0-9a-f]{32}$/);
    // OTLP carries trace ids as 16 raw bytes.
    expect(body.includes(Buffer.from(ended!["trace_id"]!, "hex"))).toBe(true);
  });
});
