import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import {
  AgentHostService,
  RunOutcomeSchema,
  type RunOutcome,
  type RunTaskResponse,
  WholePieceSchema,
} from "../../gen/conductor/v1/agent_host_pb.js";
import { AsyncQueue } from "../shared/async-queue.ts";
import { invalid, notFound } from "../shared/errors.ts";
import { boundOutput, boundResult, pieces } from "../shared/output-bounds.ts";
import type { AgentHost } from "./host.ts";
import { AgentState } from "../../gen/conductor/v1/agent_pb.js";
import { ErrorKind, TaskResultSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";

/**
 * Output a run may have waiting for its reader (UTF-16 units of text, about bytes) before its
 * CLI is paused: a slow reader costs this much memory at most, plus one line.
 */
export const RUN_BUFFER_BYTES = 8 * 1024 * 1024;

/** About how much memory a step of a run holds: its text. */
function bytesOf(kind: RunTaskResponse["kind"]): number {
  if (kind.case === "output") return kind.value.rawJson.length + kind.value.text.length;
  if (kind.case === "wholePiece") return kind.value.text.length;
  return 0;
}

/**
 * A line or result cut to fit a 4 MiB client (`boundOutput`/`boundResult`) is preceded by its
 * whole, in pieces of at most 1 MiB, for the Orchestrator to keep (GetTaskOutput).
 */
function sendWhole(queue: AsyncQueue<RunTaskResponse["kind"]>, whole: string | undefined): void {
  if (whole === undefined) return;
  for (const text of pieces(whole)) {
    queue.push({ case: "wholePiece", value: create(WholePieceSchema, { text }) });
  }
}

/** Largest chunk of a streamed patch. */
export const PATCH_CHUNK_BYTES = 1024 * 1024;

/** git's output re-cut into chunks of at most PATCH_CHUNK_BYTES. */
async function* patchChunks(source: AsyncIterable<Buffer>) {
  for await (const buf of source) {
    for (let at = 0; at < buf.length; at += PATCH_CHUNK_BYTES) {
      yield { chunk: buf.subarray(at, at + PATCH_CHUNK_BYTES) };
    }
  }
}

/** Takes the outcome of a run whose RunTask stream was gone by its end (a joined node's). */
export interface OutcomeKeeper {
  keepOutcome(taskId: string, attempt: number, outcome: RunOutcome): void;
}

/** The AgentHostService handlers: thin, over the AgentHost domain object. */
export function agentHostRoutes(host: AgentHost, keeper?: OutcomeKeeper) {
  return (router: ConnectRouter) =>
    router.service(AgentHostService, {
      getCapacity() {
        const agents = host.agents();
        return {
          nodeId: host.opts.nodeId,
          runtime: host.opts.backend.name,
          agentsTotal: agents.length,
          agentsIdle: agents.filter((a) => a.state === AgentState.IDLE).length,
          ...host.opts.offer,
          instanceId: host.instanceId,
        };
      },
      listAgents() {
        return { agents: host.agents() };
      },
      async startAgent() {
        return { agent: await host.startAgent() };
      },
      async stopAgent(req) {
        await host.stopAgent(req.agentId);
        return {};
      },
      async *runTask(req, ctx) {
        if (!req.agentId) throw invalid("agent_id is required");
        if (!req.taskId) throw invalid("task_id is required");
        if (!req.spec?.prompt) throw invalid("spec.prompt is required");
        // An agent whose last outcome was told at its result line takes this run once that
        // run is ended (its CLI's exit): only then does this one start, or is refused (as on
        // an agent whose container is found dead).
        await host.ready(req.agentId);
        if (ctx.signal.aborted)
          throw new ConnectError("the call ended before the run started", Code.Canceled);
        const queue = new AsyncQueue<RunTaskResponse["kind"]>(bytesOf);
        // A joined node's run outlives its stream (a tunnel that broke, an Orchestrator that
        // restarted): it goes on while the node holds its lease (CancelRun, a heartbeat or
        // self-fencing end it), what it prints meanwhile is dropped, and its outcome is
        // reported (ReportOutcome). A local AgentHost's run ends with its stream.
        const detached = () => keeper !== undefined && ctx.signal.aborted;
        if (keeper) ctx.signal.addEventListener("abort", () => queue.end(), { once: true });
        // A reader that falls behind holds the CLI, not this process's memory.
        const flow = {
          full: () => !detached() && queue.size > RUN_BUFFER_BYTES,
          drained: () => queue.drained(RUN_BUFFER_BYTES / 2),
        };
        const running = host.run(
          req.agentId,
          {
            taskId: req.taskId,
            attempt: req.attempt,
            spec: req.spec,
            previous: req.previousResult,
            resultSchema: req.resultSchema,
          },
          keeper ? new AbortController().signal : ctx.signal,
          (output) => {
            sendWhole(queue, boundOutput(output));
            queue.push({ case: "output", value: output });
          },
          flow,
        );
        const done = running.then(
          (outcome) => {
            const value = create(RunOutcomeSchema, outcome);
            if (value.result) sendWhole(queue, boundResult(value.result));
            sendable(value);
            if (ctx.signal.aborted) keeper?.keepOutcome(req.taskId, req.attempt, value);
            queue.push({ case: "outcome", value });
            queue.end();
          },
          (e: unknown) => queue.fail(e),
        );
        yield { kind: { case: "started", value: { agentId: req.agentId } } };
        for await (const kind of queue) yield { kind };
        await done;
      },
      async checkWorkspace(req, ctx) {
        return { commit: await host.checkWorkspace(req.workspace, ctx.signal) };
      },
      async *getPatch(req, ctx) {
        if (!req.repository || !req.baseCommit || !req.headCommit) {
          throw invalid("repository, base_commit and head_commit are required");
        }
        yield* patchChunks(
          host.workspaces.patch(req.repository, req.baseCommit, req.headCommit, ctx.signal),
        );
      },
      async cancelRun(req) {
        if (!req.taskId) throw invalid("task_id is required");
        const found = await host.cancel(req.taskId);
        if (!found) throw notFound("running task", req.taskId);
        return { found };
      },
    });
}

/**
 * Makes sure the outcome can be encoded and decoded: a result the run built from what its agent
 * printed, that protobuf cannot carry after all (a value out of a field's range, nesting past its
 * recursion limit), would fail the whole RunTask answer, and the Orchestrator would take the
 * AgentHost as lost. Such a result is replaced by a failure saying why, the run's own (CLI_ERROR).
 */
export function sendable(value: RunOutcome): void {
  /** Why `v` cannot be carried, or undefined. */
  const carried = (v: RunOutcome): string | undefined => {
    try {
      // Encoded and decoded as the Orchestrator will (protobuf-es checks depth as it decodes).
      fromBinary(RunOutcomeSchema, toBinary(RunOutcomeSchema, v));
      return undefined;
    } catch (e) {
      return e instanceof Error ? e.message : "an unknown error";
    }
  };
  const e = carried(value);
  if (e === undefined) return;
  const was = value.result;
  value.state = TaskState.FAILED;
  value.result = create(TaskResultSchema, {
    isError: true,
    error: `the run's result could not be sent: ${e.slice(0, 500)}`,
    errorKind: ErrorKind.CLI_ERROR,
    // What the run spent (metered by the model proxy) still counts toward budgets and limits.
    costUsd: was?.costUsd ?? 0,
    durationMs: was?.durationMs ?? 0n,
    ...(was?.usage ? { usage: was.usage } : {}),
  });
  if (carried(value) !== undefined) {
    value.result.usage = undefined;
    value.result.durationMs = 0n;
  }
}
