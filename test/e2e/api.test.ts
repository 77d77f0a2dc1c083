import { execFile } from "node:child_process";
import { statSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import path from "node:path";
import { promisify } from "node:util";
import type * as grpc from "@grpc/grpc-js";
import { Code } from "@connectrpc/connect";
import { beforeAll, describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { bufCurl } from "../buf-curl.ts";
import { ROOT, scripted, spec, waitForEnd, waitForState } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";
import { grpcJsClient } from "../grpc-js-clients.ts";
import { failureOf } from "../rpc-errors.ts";

const run = promisify(execFile);

/** The public gRPC contract: clear errors for bad input, other clients, reflection, the CLI. */
describe("the Orchestrator's API", () => {
  let socket: string;
  const setup = useConductor(() => ({
    agents: 1,
    env: { CONDUCTOR_ORCHESTRATOR_MAX_PROMPT_BYTES: "2000" },
  }));

  beforeAll(() => {
    socket = path.join(setup.conductor.socketDir, "orchestrator.sock");
  });

  it("serves on a socket only its owner can use (mode 0600)", () => {
    expect(statSync(socket).mode & 0o777).toBe(0o600);
  });

  it("refuses bad input with the right code and a clear message, storing nothing", async () => {
    const { client } = setup.conductor;
    const kept = (await client.submitTask({ spec: spec({ prompt: "keep me", priority: 0 }) }))
      .task!;
    const cases: [Promise<unknown>, Code, RegExp][] = [
      [client.submitTask({}), Code.InvalidArgument, /spec is required/],
      [
        client.submitTask({ spec: spec({ prompt: "   " }) }),
        Code.InvalidArgument,
        /prompt must not be empty/,
      ],
      [
        client.submitTask({ spec: spec({ prompt: "x", priority: 11 }) }),
        Code.InvalidArgument,
        /priority must be between 0 and 10/,
      ],
      [
        client.submitTask({ spec: spec({ prompt: "x", timeoutSeconds: -5 }) }),
        Code.InvalidArgument,
        /timeout_seconds/,
      ],
      [
        client.submitTask({ spec: spec({ prompt: "x".repeat(2001) }) }),
        Code.InvalidArgument,
        /2001 bytes, over the limit of 2000/,
      ],
      [
        client.submitTask({ spec: spec({ prompt: "x", type: "poetry" }) }),
        Code.InvalidArgument,
        /type "poetry" is unknown/,
      ],
      [client.getTask({ id: "no-such-task" }), Code.NotFound, /task "no-such-task" not found/],
      [client.cancelTask({ id: "no-such-task" }), Code.NotFound, /not found/],
      [client.listTasks({ pageToken: "garbage" }), Code.InvalidArgument, /page_token/],
      [client.listTasks({ pageToken: "1e3" }), Code.InvalidArgument, /page_token/],
      // An id a call is about: required, and no longer than any this server makes.
      [client.getTask({ id: "" }), Code.InvalidArgument, /id is required/],
      [client.cancelTask({ id: "" }), Code.InvalidArgument, /id is required/],
      [client.cancelTask({ id: "x".repeat(70) }), Code.InvalidArgument, /70 bytes/],
      [client.getTaskGroup({ id: "" }), Code.InvalidArgument, /id is required/],
    ];
    for (const [call, expected, message] of cases) {
      const got = await failureOf(call);
      expect(got.code, got.message).toBe(expected);
      expect(got.message).toMatch(message);
    }
    await expect(
      failureOf(
        (async () => {
          for await (const _ of client.watchTask({ id: "nope" })) {
            /* none */
          }
        })(),
      ),
    ).resolves.toMatchObject({ code: Code.NotFound });
    await expect(
      failureOf(
        (async () => {
          for await (const _ of client.watchTask({ id: "" })) {
            /* none */
          }
        })(),
      ),
    ).resolves.toMatchObject({ code: Code.InvalidArgument });

    // A malformed request body (not protobuf) is refused as gRPC servers do (grpc-go and
    // grpc-js also answer INTERNAL for a request that does not unmarshal), saying why.
    const status = await rawGrpcCall(
      socket,
      "/conductor.v1.OrchestratorService/SubmitTask",
      Buffer.from([0x0a, 0xff, 0xff, 0xff]),
    );
    expect(status.code).toBe(String(Code.Internal));
    expect(status.message).toMatch(/parse binary/);

    const { tasks } = await client.listTasks({});
    expect(tasks.map((t) => t.id)).toEqual([kept.id]);
    const again = (await client.getTask({ id: kept.id })).task!;
    expect(again.spec?.prompt).toBe("keep me");
    // Cancelling an ended task is a precondition failure; the idempotency key dedupes.
    await client.cancelTask({ id: kept.id }).catch(() => undefined);
    expect((await failureOf(client.cancelTask({ id: kept.id }))).code).toBe(
      Code.FailedPrecondition,
    );
    const a = await client.submitTask({ spec: spec({ prompt: "once", idempotencyKey: "k-1" }) });
    const b = await client.submitTask({ spec: spec({ prompt: "once", idempotencyKey: "k-1" }) });
    expect(b.task!.id).toBe(a.task!.id);
    expect(b.deduplicated).toBe(true);
    await waitForEnd(client, a.task!.id);
    // The answer to a submit made again is the task as it stands, as GetTask gives it: a queued
    // one says what holds it.
    const { task: dep } = await client.submitTask({
      spec: spec({
        allowedTools: ["Bash"],
        prompt: scripted([{ bash: "echo in; sleep 4740" }, { text: "never" }]),
      }),
    });
    const after = () =>
      client.submitTask({
        spec: spec({ prompt: "after", dependsOn: [dep!.id], idempotencyKey: "k-2" }),
      });
    try {
      await waitForState(client, dep!.id, TaskState.RUNNING); // what the reason names stays
      const waiting = (await after()).task!;
      const twice = (await after()).task!;
      expect(twice.queueReason).toMatch(/depend/);
      expect(twice).toEqual((await client.getTask({ id: waiting.id })).task);
    } finally {
      // The dependency's run would hold the agent the next tests need; its dependent goes too.
      await client.cancelTask({ id: dep!.id });
    }
  });

  it("serves a @grpc/grpc-js client over the Unix socket: submit, then watch to the end", async () => {
    const client = grpcJsClient<GrpcJsOrchestrator>(
      "conductor/v1/orchestrator.proto",
      "OrchestratorService",
      socket,
    );
    try {
      const submitted = await new Promise<{ task: { id: string } }>((resolve, reject) =>
        client.SubmitTask(
          { spec: { prompt: scripted([{ text: "hello from grpc-js" }]) } },
          (err, res) => (err ? reject(err) : resolve(res)),
        ),
      );
      const events: WatchEvent[] = [];
      await new Promise<void>((resolve, reject) => {
        const stream = client.WatchTask({ id: submitted.task.id });
        stream.on("data", (e: WatchEvent) => events.push(e));
        stream.on("end", resolve);
        stream.on("error", reject);
      });
      expect(events.at(-1)?.event.stateChange?.state).toBe("TASK_STATE_SUCCEEDED");
      expect(events.find((e) => e.event.result)?.event.result?.text).toBe("hello from grpc-js");
    } finally {
      client.close();
    }
  });

  it("answers reflection: buf curl lists the services", async () => {
    const buf = path.join(ROOT, "node_modules", ".bin", "buf");
    const { stdout } = await run(buf, [
      "curl",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "--unix-socket",
      socket,
      "--list-services",
      "http://localhost",
    ]);
    expect(stdout.split("\n")).toEqual(
      expect.arrayContaining([
        "conductor.v1.OrchestratorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
      ]),
    );
    const health = { stdout: await bufCurl(socket, "/grpc.health.v1.Health/Check", {}) };
    expect(JSON.parse(health.stdout)).toEqual({ status: "SERVING" });
  });

  it("drives a task from the conductor CLI: submit --wait, get, tasks", async () => {
    const cli = path.join(ROOT, "bin", "conductor.js");
    const args = ["--socket-dir", setup.conductor.socketDir];
    const { stdout } = await run(process.execPath, [
      cli,
      "submit",
      scripted([{ text: "from the cli" }]),
      "--priority",
      "3",
      "--wait",
      "--json",
      ...args,
    ]);
    const task = JSON.parse(stdout.trim().split("\n").at(-1)!) as {
      id: string;
      state: string;
      result: { text: string };
    };
    expect(task.state).toBe("TASK_STATE_SUCCEEDED");
    expect(task.result.text).toBe("from the cli");
    const got = await run(process.execPath, [cli, "get", task.id, "--json", ...args]);
    expect(JSON.parse(got.stdout)).toMatchObject({ id: task.id, spec: { priority: 3 } });
    const list = await run(process.execPath, [cli, "tasks", "--state", "succeeded", ...args]);
    expect(list.stdout).toContain(task.id);
    const stats = JSON.parse(
      (await run(process.execPath, [cli, "stats", "--json", ...args])).stdout,
    ) as {
      tasksByState: Record<string, string>;
      agentsIdle: number;
      agentsBusy: number;
    };
    expect(Number(stats.tasksByState["TASK_STATE_SUCCEEDED"])).toBeGreaterThanOrEqual(1);
    expect(stats.agentsIdle + stats.agentsBusy).toBe(1);
    const bad = await run(process.execPath, [
      cli,
      "submit",
      "x",
      "--priority",
      "42",
      ...args,
    ]).catch((e: { code: number; stderr: string }) => e);
    expect(bad).toMatchObject({ code: 1 });
    expect((bad as { stderr: string }).stderr).toMatch(
      /priority must be between 0 and 10.*InvalidArgument/,
    );
    expect(TaskState.SUCCEEDED).toBeDefined();
  });
});

/** A WatchTask message as @grpc/proto-loader decodes it (enums as names). */
interface WatchEvent {
  event: { stateChange?: { state: string }; result?: { text: string } };
}

/** The two methods the interop test calls, as grpc-js exposes them. */
interface GrpcJsOrchestrator extends grpc.Client {
  SubmitTask(
    req: object,
    cb: (err: grpc.ServiceError | null, res: { task: { id: string } }) => void,
  ): grpc.ClientUnaryCall;
  WatchTask(req: { id: string }): grpc.ClientReadableStream<WatchEvent>;
}

/** Sends one raw gRPC request (a length-prefixed body) and returns the grpc-status trailer. */
function rawGrpcCall(
  socket: string,
  pathName: string,
  body: Buffer,
): Promise<{ code: string; message: string }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect("http://localhost", {
      createConnection: () => net.connect(socket),
    });
    session.on("error", reject);
    const req = session.request({
      ":method": "POST",
      ":path": pathName,
      "content-type": "application/grpc",
      te: "trailers",
    });
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt8(0, 0);
    frame.writeUInt32BE(body.length, 1);
    body.copy(frame, 5);
    let headers: http2.IncomingHttpHeaders = {};
    req.on("response", (h) => (headers = h));
    req.on("trailers", (t: http2.IncomingHttpHeaders) => (headers = { ...headers, ...t }));
    req.on("data", () => {});
    req.on("end", () => {
      session.close();
      resolve({
        code: String(headers["grpc-status"]),
        message: decodeURIComponent(String(headers["grpc-message"] ?? "")),
      });
    });
    req.on("error", reject);
    req.end(frame);
  });
}
