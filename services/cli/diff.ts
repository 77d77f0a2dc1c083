import { toJson } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import type { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import {
  TaskState,
  WorkspaceChangeSchema,
  type WorkspaceChange,
} from "../../gen/conductor/v1/task_pb.js";
import { diffStat } from "./change-text.ts";
import { stateName } from "./format.ts";

/** What `diff` and `apply` ask of the Orchestrator (a connect client of it has both). */
export type PatchSource = Pick<Client<typeof OrchestratorService>, "getTask" | "getTaskPatch">;

/** A task has no change to show or apply, and the message says why. */
export class NoChangeError extends Error {
  override name = "NoChangeError";
}

/** The change of task `id` (its result's WorkspaceChange), or NoChangeError saying why not. */
export async function changeOf(client: PatchSource, id: string): Promise<WorkspaceChange> {
  const { task } = await client.getTask({ id });
  const change = task?.result?.change;
  if (change) return change;
  if (task?.spec?.workspace?.kind.case !== "git")
    throw new NoChangeError(
      `task ${id} has no git workspace, so it has no change: a task submitted with ` +
        `--repo REPO works on a branch of REPO, which "conductor diff" and "conductor apply" show and apply`,
    );
  const state = task.state;
  if (state >= TaskState.SUCCEEDED)
    throw new NoChangeError(
      `task ${id} ended ${stateName(state)} without a change (no attempt got as far as its ` +
        `workspace): "conductor get ${id}" says why`,
    );
  throw new NoChangeError(
    `task ${id} has not finished an attempt yet (${stateName(state)}): its change is there ` +
      `once one ends; "conductor watch ${id}" follows it`,
  );
}

/** Where `diff` writes: lines, and bytes as they come (resolving once written). */
export interface DiffIO {
  out: (line: string) => void;
  write: (data: string | Uint8Array) => Promise<void>;
}

/**
 * `conductor diff ID`: the task's patch (git format-patch output) streamed to `io.write` as it
 * arrives, each chunk written before the next is read; with `stat`, a `git diff --stat` of its
 * change instead; with `json`, the change as JSON. Returns the exit code.
 */
export async function diff(
  client: PatchSource,
  id: string,
  how: { stat: boolean; json: boolean },
  io: DiffIO,
): Promise<number> {
  const change = await changeOf(client, id);
  if (how.json) {
    const value = toJson(WorkspaceChangeSchema, change, { alwaysEmitImplicit: true });
    io.out(JSON.stringify(value, null, 2));
  } else if (how.stat) {
    diffStat(change).forEach((l) => io.out(l));
  } else {
    for await (const { chunk } of client.getTaskPatch({ taskId: id })) await io.write(chunk);
  }
  return 0;
}
