import { execFile } from "node:child_process";
import path from "node:path";
import { setImmediate as turn } from "node:timers/promises";
import { promisify } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  SubmitTasksRequestSchema,
  SubmitTasksResponseSchema,
  type SubmitTasksRequest,
  type SubmitAnswer,
} from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskSpecSchema, TaskState, type Task } from "../../gen/conductor/v1/task_pb.js";
import { PYTHON, RAW_CALL } from "../../test/harness.ts";
import { StorageFull } from "../shared/errors.ts";
import { createLogger } from "../shared/log.ts";
import { until, World } from "../../test/orchestrator-world.ts";
import { MAX_UNANSWERED, submitEach } from "./submit-stream.ts";

const run = promisify(execFile);

const request = (prompt: string, more: Partial<Parameters<typeof create>[1]> = {}) =>
  create(SubmitTasksRequestSchema, { spec: create(TaskSpecSchema, { prompt, ...more }) });

describe("SubmitTasks", () => {
  it("answers every request in order: a task id, the task a key matched, or why it was refused", async () => {
    await using w = new World();
    await w.startOrchestrator();
    const requests: SubmitTasksRequest[] = [];
    for (let i = 0; i < 300; i++) {
      if (i === 50)
        requests.push(request("")); // no prompt
      else if (i === 100) requests.push(request("after", { dependsOn: ["no-such-task"] }));
      else if (i === 10 || i === 150) requests.push(request(`keyed ${i}`, { idempotencyKey: "k" }));
      else requests.push(request(`task ${i}`));
    }
    async function* sent() {
      yield* requests;
    }
    const answers: SubmitAnswer[] = [];
    for await (const res of w.client.submitTasks(sent())) answers.push(...res.answers);

    expect(answers).toHaveLength(300);
    expect(answers[50]!.taskId).toBe("");
    expect(answers[50]!.error).toMatchObject({ code: Code.InvalidArgument });
    expect(answers[50]!.error!.message).toMatch(/prompt/);
    expect(answers[100]!.error).toMatchObject({ code: Code.NotFound });
    expect(answers[100]!.error!.message).toMatch(/no-such-task/);
    expect(answers[150]).toMatchObject({ taskId: answers[10]!.taskId, deduplicated: true });
    const stored = new Map<string, Task>();
    for (let page = ""; ;) {
      const res = await w.client.listTasks({ pageSize: 1000, pageToken: page });
      for (const t of res.tasks) stored.set(t.id, t);
      if (!(page = res.nextPageToken)) break;
    }
    expect(stored.size).toBe(297); // 300, less the two refused and the repeated key
    answers.forEach((a, i) => {
      if (i === 50 || i === 100 || i === 150) return;
      expect(a.error).toBeUndefined();
      const task = stored.get(a.taskId)!;
      expect(task.spec!.prompt).toBe(requests[i]!.spec!.prompt);
      expect(task.state).toBe(TaskState.QUEUED);
    });
  });

  it(`reads no more than ${MAX_UNANSWERED} requests ahead of the answers, and stops reading when their reader leaves`, async () => {
    let pulled = 0;
    let closed = false;
    async function* requests() {
      try {
        for (let i = 0; i < 10_000; i++) {
          pulled++;
          yield request(`task ${i}`);
        }
      } finally {
        closed = true;
      }
    }
    const held: ((v: { task: Task; deduplicated: boolean }) => void)[] = [];
    const submit = () => new Promise<{ task: Task; deduplicated: boolean }>((r) => held.push(r));
    const answers = submitEach(requests(), submit);
    const first = answers.next();
    await until(() => held.length === MAX_UNANSWERED, `${MAX_UNANSWERED} submits begun`);
    for (let i = 0; i < 20; i++) await turn(); // a reader that went on would have by now
    expect(held).toHaveLength(MAX_UNANSWERED);
    expect(pulled).toBe(MAX_UNANSWERED);

    // The oldest answered: one more request is read.
    held[0]!({ task: { id: "t0" } as Task, deduplicated: false });
    expect((await first).value).toEqual({ answers: [{ taskId: "t0", deduplicated: false }] });
    const second = answers.next();
    await until(() => held.length === MAX_UNANSWERED + 1, "one more submit begun");
    held[1]!({ task: { id: "t1" } as Task, deduplicated: true });
    expect((await second).value).toEqual({ answers: [{ taskId: "t1", deduplicated: true }] });

    // The reader of the answers leaves: the requests are read no further.
    await answers.return(undefined);
    await until(() => closed, "the requests closed");
    expect(pulled).toBeLessThanOrEqual(MAX_UNANSWERED + 2);
  });
});

describe("SubmitTasks from Python's grpcio", () => {
  it("answers a stream of requests in order, as a client in another language sees it", async () => {
    await using w = new World();
    await w.startOrchestrator();
    const asB64 = (prompt: string) =>
      Buffer.from(toBinary(SubmitTasksRequestSchema, request(prompt))).toString("base64");
    const { stdout } = await run(PYTHON, [
      RAW_CALL,
      path.join(w.dir, "run", "orchestrator.sock"),
      "/conductor.v1.OrchestratorService/SubmitTasks",
      [asB64("first"), asB64(""), asB64("third")].join(","),
      "bidi",
    ]);
    const answers = stdout
      .trim()
      .split("\n")
      .flatMap(
        (line) => fromBinary(SubmitTasksResponseSchema, Buffer.from(line, "base64")).answers,
      );
    expect(answers).toHaveLength(3);
    expect(answers[1]!.error?.code).toBe(Code.InvalidArgument);
    for (const [i, prompt] of [
      [0, "first"],
      [2, "third"],
    ] as const) {
      expect((await w.task(answers[i]!.taskId)).spec!.prompt).toBe(prompt);
    }
  });
});

describe("SubmitTasks' refusals", () => {
  it("carry the code SubmitTask fails with: a full disk RESOURCE_EXHAUSTED, a fault INTERNAL without its text", async () => {
    async function* requests() {
      yield request("a");
      yield request("b");
    }
    const faults = [new StorageFull("/data", new Error("ENOSPC")), new Error("secret detail")];
    const lines: string[] = [];
    const log = createLogger("info", {}, (line) => void lines.push(line));
    const answers = [];
    const submit = () => Promise.reject(faults.shift()!);
    for await (const res of submitEach(requests(), submit, { log })) answers.push(...res.answers!);
    expect(answers[0]!.error).toMatchObject({ code: Code.ResourceExhausted });
    expect(answers[1]!.error).toEqual({ code: Code.Internal, message: "internal error" });
    // The operator reads the cause the caller is not told: the fault, logged once.
    expect(lines.map((l) => JSON.parse(l) as Record<string, unknown>)).toMatchObject([
      { level: "error", rpc: "SubmitTasks", error: { message: "secret detail" } },
    ]);
  });
});

describe("SubmitTasks' deadline", () => {
  it("ends the stream with the signal's reason (DEADLINE_EXCEEDED) while the caller sends nothing more", async () => {
    let release: () => void = () => undefined;
    const silent = new Promise<void>((r) => (release = r));
    async function* requests() {
      yield request("a");
      await silent; // the caller keeps its stream open and sends nothing more
    }
    const call = new AbortController();
    const answers = submitEach(
      requests(),
      () => Promise.resolve({ task: { id: "t" } as Task, deduplicated: false }),
      {
        signal: call.signal,
      },
    );
    try {
      expect((await answers.next()).value).toEqual({
        answers: [{ taskId: "t", deduplicated: false }],
      });
      const next = answers.next();
      call.abort(new ConnectError("the deadline passed", Code.DeadlineExceeded));
      await expect(next).rejects.toMatchObject({ code: Code.DeadlineExceeded });
    } finally {
      release();
    }
  });
});
