import type { MessageInitShape } from "@bufbuild/protobuf";
import type {
  SubmitTasksRequest,
  SubmitTasksResponseSchema,
} from "../../gen/conductor/v1/orchestrator_pb.js";
import type { Task, TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { AsyncQueue } from "../shared/async-queue.ts";
import { toStatus } from "../shared/errors.ts";

/**
 * Most requests of one SubmitTasks stream stored or being stored but not yet answered: beyond
 * it the stream is not read (HTTP/2 flow control holds the sender), so one stream holds at most
 * this many decoded requests (each at most the server's 4 MiB read bound).
 */
export const MAX_UNANSWERED = 256;

type Answer = MessageInitShape<typeof SubmitTasksResponseSchema>;

/**
 * SubmitTasks: each request submitted as it arrives (`submit`, SubmitTask's path; submits of one
 * event-loop turn share a commit), answered in the order asked. A refused request is answered
 * with its gRPC code and message, and the stream goes on. Reading stops at MAX_UNANSWERED until
 * the oldest is answered, and for good when the reader of the answers leaves; an error reading
 * the requests ends the stream with it, after the answers before it.
 */
export async function* submitEach(
  requests: AsyncIterable<SubmitTasksRequest>,
  submit: (spec: TaskSpec | undefined) => Promise<{ task: Task; deduplicated: boolean }>,
): AsyncGenerator<Answer> {
  const answers = new AsyncQueue<Promise<Answer>>();
  let unanswered = 0;
  let room: (() => void) | undefined;
  let left = false;
  const read = async () => {
    try {
      for await (const req of requests) {
        answers.push(
          submit(req.spec).then(
            ({ task, deduplicated }): Answer => ({ taskId: task.id, deduplicated }),
            (e: unknown): Answer => {
              const err = toStatus(e); // as SubmitTask's error edge gives it
              return { error: { code: err.code, message: err.rawMessage } };
            },
          ),
        );
        if (++unanswered >= MAX_UNANSWERED) await new Promise<void>((r) => (room = r));
        if (left) return;
      }
      answers.end();
    } catch (e) {
      answers.fail(e);
    }
  };
  read().catch(() => undefined); // it settles the queue itself
  try {
    for await (const answer of answers) {
      yield await answer;
      unanswered--;
      room?.();
      room = undefined;
    }
  } finally {
    left = true;
    answers.end();
    room?.();
  }
}
