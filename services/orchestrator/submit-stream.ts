import type { MessageInitShape } from "@bufbuild/protobuf";
import type {
  SubmitTasksRequest,
  SubmitAnswerSchema,
  SubmitTasksResponseSchema,
} from "../../gen/conductor/v1/orchestrator_pb.js";
import type { Task, TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { Code } from "@connectrpc/connect";
import { toStatus } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";

/**
 * Most requests of one SubmitTasks stream stored or being stored but not yet answered: beyond
 * it the stream is not read (HTTP/2 flow control holds the sender), so one stream holds at most
 * this many decoded requests (each at most the server's 4 MiB read bound).
 */
export const MAX_UNANSWERED = 256;

type Answer = MessageInitShape<typeof SubmitAnswerSchema>;
type Answers = MessageInitShape<typeof SubmitTasksResponseSchema>;

/**
 * SubmitTasks: each request submitted as it arrives (`submit`, SubmitTask's path; submits of one
 * event-loop turn share a commit), answered in the order asked: each response holds every answer
 * next in line that is ready (one write for a whole commit's worth). A refused request is
 * answered with its gRPC code and message, and the stream goes on. Reading stops while
 * MAX_UNANSWERED requests wait for their answers (those being written count), and for good when
 * the reader of the answers leaves; an error reading the requests ends the stream with it, after
 * the answers before it, and so does `signal` aborting (the call's deadline or cancellation),
 * with its reason. A refusal for a fault of the server (INTERNAL, whose cause the answer does
 * not carry) is logged with its cause on `log`, as SubmitTask's error edge logs it.
 */
export async function* submitEach(
  requests: AsyncIterable<SubmitTasksRequest>,
  submit: (spec: TaskSpec | undefined) => Promise<{ task: Task; deduplicated: boolean }>,
  opts: { signal?: AbortSignal; log?: Logger } = {},
): AsyncGenerator<Answers> {
  const { signal, log } = opts;
  /** The requests read and not yet answered, in order; `answer` once it is settled. */
  const line: { answer?: Answer }[] = [];
  let unanswered = 0;
  let ended = false;
  let failure: { error: unknown } | undefined;
  let left = false;
  let wake: (() => void) | undefined;
  let room: (() => void) | undefined;
  const poke = () => {
    wake?.();
    wake = undefined;
  };
  const read = async () => {
    try {
      for await (const req of requests) {
        const entry: { answer?: Answer } = {};
        line.push(entry);
        const settle = (answer: Answer) => {
          entry.answer = answer;
          poke();
        };
        submit(req.spec).then(
          ({ task, deduplicated }) => settle({ taskId: task.id, deduplicated }),
          (e: unknown) => {
            const err = toStatus(e); // as SubmitTask's error edge gives it
            if (err.code === Code.Internal)
              log?.error("request failed", { error: err.cause ?? e, rpc: "SubmitTasks" });
            settle({ error: { code: err.code, message: err.rawMessage } });
          },
        );
        if (++unanswered >= MAX_UNANSWERED) await new Promise<void>((r) => (room = r));
        if (left) return;
      }
    } catch (e) {
      failure = { error: e };
    }
    ended = true;
    poke();
  };
  read().catch(() => undefined); // it ends the line itself
  signal?.addEventListener("abort", poke);
  try {
    for (;;) {
      if (signal?.aborted) throw signal.reason;
      let ready = 0;
      while (ready < line.length && line[ready]!.answer) ready++;
      if (ready > 0) {
        const answers = line.splice(0, ready).map((e) => e.answer!);
        yield { answers };
        unanswered -= answers.length;
        room?.();
        room = undefined;
        continue;
      }
      if (ended && line.length === 0) {
        if (failure) throw failure.error;
        return;
      }
      await new Promise<void>((r) => (wake = r));
    }
  } finally {
    signal?.removeEventListener("abort", poke);
    left = true;
    room?.();
  }
}
