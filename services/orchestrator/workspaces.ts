import { Code, ConnectError } from "@connectrpc/connect";
import type { Task, TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { precondition } from "../shared/errors.ts";
import type { HostLink, HostRegistry } from "./hosts.ts";

/**
 * How long a submit waits for a node to check a workspace (a first clone of a large remote
 * repository can take longer: then the task is accepted, and the node fails it if need be).
 */
export const CHECK_TIMEOUT_MS = 30_000;

/** Answers from a node that say the workspace itself is wrong (the rest: the node could not tell). */
const REFUSALS = new Set([Code.InvalidArgument, Code.FailedPrecondition, Code.NotFound]);

/**
 * Asks a reachable AgentHost whether the task's workspace can be used (repository, ref,
 * branch, host path), so a bad one is refused at submit with the node's own words. When no
 * node answers in time the task is accepted: its node will fail it, naming the cause.
 */
export async function checkAtSubmit(
  hosts: HostRegistry,
  spec: TaskSpec,
  signal?: AbortSignal,
): Promise<void> {
  if (!spec.workspace?.kind.case) return;
  const link = hosts.links.find((l) => l.reachable);
  if (!link) return;
  try {
    await link.client.checkWorkspace(
      { workspace: spec.workspace },
      { timeoutMs: CHECK_TIMEOUT_MS, ...(signal ? { signal } : {}) },
    );
  } catch (e) {
    const err = ConnectError.from(e);
    if (REFUSALS.has(err.code)) throw new ConnectError(err.rawMessage, err.code);
  }
}

/**
 * Streams a task's change as `git format-patch` output, from the node that holds its
 * repository's clone (the one its last attempt ran on, else any that answers).
 */
export async function* patchOf(
  hosts: HostRegistry,
  task: Task,
  attemptHost: string,
  signal: AbortSignal,
): AsyncGenerator<Uint8Array> {
  const change = task.result?.change;
  if (!change?.headCommit) {
    const why =
      task.spec?.workspace?.kind.case === "git"
        ? "no attempt of it has ended yet"
        : "it has no git workspace (submit it with --repo)";
    throw precondition(`task ${task.id} has no change to show: ${why}`);
  }
  const first = hosts.link(attemptHost);
  const links: HostLink[] = [
    ...(first ? [first] : []),
    ...hosts.links.filter((l) => l !== first && l.reachable),
  ];
  if (links.length === 0) {
    throw precondition(
      `the node that ran task ${task.id} (${attemptHost || "unknown"}) cannot be reached; its branch ${change.branch} is in that node's cached clone`,
    );
  }
  let last: unknown;
  for (const link of links) {
    let sent = false;
    try {
      const stream = link.client.getPatch(
        {
          repository: change.repository,
          baseCommit: change.baseCommit,
          headCommit: change.headCommit,
        },
        { signal },
      );
      for await (const res of stream) {
        sent = true;
        yield res.chunk;
      }
      return;
    } catch (e) {
      // Half a patch cannot be completed from elsewhere.
      if (sent || signal.aborted) throw e;
      last = e;
    }
  }
  const err = ConnectError.from(last);
  throw precondition(`the patch of task ${task.id} cannot be made: ${err.rawMessage}`);
}
