import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { fromBinary, toBinary, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type * as grpc from "@grpc/grpc-js";
import { beforeAll, describe, expect, it } from "vitest";
import {
  GetTaskRequestSchema,
  GetTaskResponseSchema,
  ListTasksRequestSchema,
  ListTasksResponseSchema,
} from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { bufCurl } from "../buf-curl.ts";
import { PYTHON, RAW_CALL, ROOT, scripted, spec, waitForEnd } from "../harness.ts";
import { failureOf } from "../rpc-errors.ts";
import { grpcJsAgentHost, grpcJsClient, type JsRunStep } from "../grpc-js-clients.ts";
import { useConductor } from "./use-conductor.ts";

const run = promisify(execFile);
const FOUR_MIB = 4 * 1024 * 1024;
const CLI = path.join(ROOT, "bin", "conductor.js");
const SERVICE = "/conductor.v1.OrchestratorService";

/**
 * Accepted means runnable, every TaskSpec field is bounded at submit, and every response fits
 * every standard gRPC client at its default 4 MiB limit: grpc-js, Python's grpcio, buf curl.
 */
describe("bounds: what is accepted runs, and every response fits any client", () => {
  let socket: string;
  let js: GrpcJsOrchestrator;
  const setup = useConductor(() => ({ agents: 1 }));

  beforeAll(() => {
    socket = path.join(setup.conductor.socketDir, "orchestrator.sock");
    js = grpcJsClient<GrpcJsOrchestrator>(
      "conductor/v1/orchestrator.proto",
      "OrchestratorService",
      socket,
    );
    return () => js.close();
  });

  /** One call from Python's grpcio (default limits); its responses decoded. */
  async function python<I extends DescMessage, O extends DescMessage>(
    method: string,
    input: I,
    request: MessageInitShape<I>,
    output: O,
    kind: "unary" | "stream" = "unary",
  ) {
    const body = Buffer.from(toBinary(input, create(input, request))).toString("base64");
    const { stdout } = await run(PYTHON, [RAW_CALL, socket, `${SERVICE}/${method}`, body, kind], {
      maxBuffer: 64 * 1024 * 1024,
    });
    return stdout
      .split("\n")
      .filter(Boolean)
      .map((line) => fromBinary(output, Buffer.from(line, "base64")));
  }

  it("runs a prompt that starts with a dash", async () => {
    const { client } = setup.conductor;
    const prompt = scripted([{ text: "fixed" }], "- fix the failing test in foo.py");
    const { task } = await client.submitTask({ spec: spec({ prompt, maxAttempts: 2 }) });
    const done = await waitForEnd(client, task!.id);
    expect(done.result?.error).toBe("");
    expect(done.state).toBe(TaskState.SUCCEEDED);
    expect(done.result?.text).toBe("fixed");
    expect(done.attempts).toBe(1);
  });

  it("refuses at submit what could never run or passes a bound, quoting only a short prefix", async () => {
    const { client } = setup.conductor;
    const before = (await client.listTasks({ pageSize: 1000 })).tasks.length;
    const huge = "y".repeat(3_900_000);
    const cases: [Parameters<typeof spec>[0], RegExp][] = [
      [{ prompt: "fix\0it" }, /spec\.prompt contains a NUL character/],
      [
        { prompt: "x", model: "m".repeat(200_000) },
        /spec\.model is 200000 bytes, over the limit of 256/,
      ],
      [{ prompt: "x", allowedTools: ["T".repeat(200_000)] }, /allowed_tools\[0\] is 200000 bytes/],
      [
        { prompt: "x", labels: { big: huge } },
        /spec\.labels\["big"\] is 3900000 bytes, over the limit of 1024/,
      ],
      [
        { prompt: "x", timeoutSeconds: 3_000_000 },
        /timeout_seconds must be between 0 .* and 604800/,
      ],
      [{ prompt: "x", type: huge }, /spec\.type "y{64}"… \(3900000 bytes\) is unknown/],
    ];
    for (const [fields, message] of cases) {
      const got = await failureOf(client.submitTask({ spec: spec(fields) }));
      expect(got.code, got.message.slice(0, 200)).toBe(Code.InvalidArgument);
      expect(got.message).toMatch(message);
      expect(got.message.length).toBeLessThan(400);
    }
    const lookup = await failureOf(client.getTask({ id: huge }));
    expect(lookup.code).toBe(Code.InvalidArgument);
    expect(lookup.message.length).toBeLessThan(400);
    expect((await client.listTasks({ pageSize: 1000 })).tasks).toHaveLength(before);
  });

  it(
    "cuts a 5 MB line and result to fit every client, and streams the whole through GetTaskOutput",
    { timeout: 180_000 },
    async () => {
      const { client } = setup.conductor;
      // A 29,000-byte tool result, repeated 180 times in the final answer: ~5.2 MB lines.
      const steps = [
        { bash: "yes aaaaaaaaa | head -c 29000" },
        { text: "{{last_tool_result}}".repeat(180) },
      ];
      const { task } = await client.submitTask({
        spec: spec({ prompt: scripted(steps), allowedTools: ["Bash"] }),
      });
      const id = task!.id;

      // grpc-js, default limits: the whole watch, to the end.
      const events = await new Promise<JsEvent[]>((resolve, reject) => {
        const got: JsEvent[] = [];
        const stream = js.WatchTask({ id });
        stream.on("data", (e: { event: JsEvent }) => got.push(e.event));
        stream.on("end", () => resolve(got));
        stream.on("error", reject);
      });
      expect(events.at(-1)?.stateChange?.state).toBe("TASK_STATE_SUCCEEDED");
      const long = events.find((e) => e.output?.truncated && e.output.type === "assistant");
      expect(long, "the 5 MB assistant line, cut").toBeDefined();
      expect(long!.output!.text).toMatch(
        /\[… truncated by conductor: \d+ bytes in all; GetTaskOutput/,
      );
      expect(Buffer.byteLength(long!.output!.rawJson)).toBeLessThanOrEqual(16 * 1024);

      // GetTask through grpc-js and Python: the result is cut too, and says so.
      const viaJs = await unary<{ task: { result: { text: string; truncated: boolean } } }>((cb) =>
        js.GetTask({ id }, cb),
      );
      expect(viaJs.task.result.truncated).toBe(true);
      const [viaPy] = await python("GetTask", GetTaskRequestSchema, { id }, GetTaskResponseSchema);
      expect(viaPy!.task!.result!.truncated).toBe(true);
      const cutText = viaPy!.task!.result!.text;
      expect(Buffer.byteLength(cutText)).toBeLessThanOrEqual(64 * 1024);

      // The whole result, in chunks that each fit, from connect and from grpc-js.
      const chunks: string[] = [];
      for await (const { text } of client.getTaskOutput({ taskId: id, eventSeq: 0n })) {
        expect(Buffer.byteLength(text)).toBeLessThanOrEqual(1024 * 1024);
        chunks.push(text);
      }
      const whole = chunks.join("");
      expect(whole.length).toBeGreaterThan(5_000_000);
      expect(whole.replace(/[a\n]/g, "")).toBe(""); // only the tool output, repeated
      expect(whole.startsWith(cutText.slice(0, cutText.indexOf("\n[… truncated")))).toBe(true);
      const jsChunks = await new Promise<string[]>((resolve, reject) => {
        const got: string[] = [];
        const stream = js.GetTaskOutput({ taskId: id, eventSeq: "0" });
        stream.on("data", (r: { text: string }) => got.push(r.text));
        stream.on("end", () => resolve(got));
        stream.on("error", reject);
      });
      expect(jsChunks.join("")).toBe(whole);

      // The whole line of the cut event, as the CLI printed it.
      let line = "";
      for await (const { text } of client.getTaskOutput({
        taskId: id,
        eventSeq: BigInt(long!.seq),
      }))
        line += text;
      const parsed = JSON.parse(line) as { message: { content: { text?: string }[] } };
      expect(parsed.message.content.map((c) => c.text ?? "").join("")).toBe(whole);

      // The same two from the command line: `conductor output`.
      const where = ["--socket-dir", setup.conductor.socketDir];
      const big = { maxBuffer: 64 * 1024 * 1024 };
      const printed = await run(process.execPath, [CLI, "output", id, ...where], big);
      expect(printed.stdout).toBe(whole);
      const printedLine = await run(
        process.execPath,
        [CLI, "output", id, "--event", String(long!.seq), ...where],
        big,
      );
      expect(printedLine.stdout).toBe(line);
    },
  );

  it(
    "sends a 5 MB line from the AgentHost's RunTask cut, its whole in pieces a grpc-js client takes",
    { timeout: 180_000 },
    async () => {
      const { client } = setup.conductor;
      const { agents } = await client.listAgents({});
      const host = grpcJsAgentHost(path.join(setup.conductor.socketDir, "agent-host.sock"));
      try {
        const steps = [
          { bash: "yes bbbbbbbbb | head -c 29000" },
          { text: "{{last_tool_result}}".repeat(180) },
        ];
        const got = await new Promise<JsRunStep[]>((resolve, reject) => {
          const all: JsRunStep[] = [];
          const stream = host.RunTask({
            agentId: agents[0]!.id,
            taskId: `direct-${process.pid}`,
            attempt: 1,
            spec: { prompt: scripted(steps), allowedTools: ["Bash"] },
          });
          stream.on("data", (r: JsRunStep) => all.push(r));
          stream.on("end", () => resolve(all));
          stream.on("error", reject);
        });
        expect(got.at(-1)?.outcome?.state).toBe("TASK_STATE_SUCCEEDED");
        // The cut assistant line comes after the pieces of its whole.
        const at = got.findIndex((r) => r.output?.truncated && r.output.type === "assistant");
        expect(at).toBeGreaterThan(0);
        let first = at;
        while (got[first - 1]?.wholePiece) first--;
        const whole = got.slice(first, at).map((r) => r.wholePiece!.text);
        expect(whole.length).toBeGreaterThan(1);
        const line = JSON.parse(whole.join("")) as { message: { content: { text?: string }[] } };
        const text = line.message.content.map((c) => c.text ?? "").join("");
        expect(text.length).toBeGreaterThan(5_000_000);
        expect(text.replace(/[b\n]/g, "")).toBe("");
        expect(got.at(-1)?.outcome?.result?.truncated).toBe(true);
      } finally {
        host.close();
      }
    },
  );

  it(
    "pages ListTasks by bytes: 45 tasks of 98 KB fit grpc-js, grpcio and buf curl, every task once",
    { timeout: 180_000 },
    async () => {
      const { client } = setup.conductor;
      const ids: string[] = [];
      for (let i = 0; i < 45; i++) {
        const prompt = scripted([{ hang: true }], `${i} ${"x".repeat(98_000)}`);
        ids.push((await client.submitTask({ spec: spec({ prompt }) })).task!.id);
      }
      try {
        // grpc-js at its default limits, page after page.
        const seen: string[] = [];
        let token = "";
        let pages = 0;
        do {
          const page = await unary<{ tasks: { id: string }[]; nextPageToken: string }>((cb) =>
            js.ListTasks({ pageSize: 45, pageToken: token }, cb),
          );
          seen.push(...page.tasks.map((t) => t.id));
          token = page.nextPageToken;
          pages++;
        } while (token);
        expect(pages).toBeGreaterThan(1);
        expect(new Set(seen).size).toBe(seen.length);
        expect(seen).toEqual(expect.arrayContaining(ids));

        // Python's grpcio, the default page (100) and page_size 45.
        for (const pageSize of [0, 45]) {
          const fromPy: string[] = [];
          let pyToken = "";
          do {
            const [page] = await python(
              "ListTasks",
              ListTasksRequestSchema,
              { pageSize, pageToken: pyToken },
              ListTasksResponseSchema,
            );
            fromPy.push(...page!.tasks.map((t) => t.id));
            pyToken = page!.nextPageToken;
          } while (pyToken);
          expect(fromPy).toEqual(seen);
        }

        // buf curl (reflection, its default limit).
        const out = { stdout: await bufCurl(socket, `${SERVICE}/ListTasks`, { pageSize: 45 }) };
        expect(out.stdout.length).toBeLessThan(FOUR_MIB);
        const first = JSON.parse(out.stdout) as { tasks: { id: string }[]; nextPageToken: string };
        expect(first.tasks.map((t) => t.id)).toEqual(seen.slice(0, first.tasks.length));
        expect(first.nextPageToken).not.toBe("");
      } finally {
        for (const id of ids) await client.cancelTask({ id }).catch(() => undefined);
      }
    },
  );
});

/** A TaskEvent as @grpc/proto-loader decodes it (enums as names, 64-bit ints as strings). */
interface JsEvent {
  seq: string;
  stateChange?: { state: string };
  output?: { type: string; text: string; rawJson: string; truncated: boolean };
}

type Callback<T> = (err: grpc.ServiceError | null, res: T) => void;

/** The methods these tests call, as grpc-js exposes them. */
interface GrpcJsOrchestrator extends grpc.Client {
  GetTask(req: { id: string }, cb: Callback<never>): grpc.ClientUnaryCall;
  ListTasks(
    req: { pageSize: number; pageToken: string },
    cb: Callback<never>,
  ): grpc.ClientUnaryCall;
  WatchTask(req: { id: string }): grpc.ClientReadableStream<{ event: JsEvent }>;
  GetTaskOutput(req: { taskId: string; eventSeq: string }): grpc.ClientReadableStream<{
    text: string;
  }>;
}

function unary<T>(call: (cb: Callback<T>) => void): Promise<T> {
  return new Promise((resolve, reject) => call((err, res) => (err ? reject(err) : resolve(res))));
}
