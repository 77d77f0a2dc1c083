import { toBinary, type Message, type MessageInitShape } from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import { TaskGroupSchema } from "../../gen/conductor/v1/group_pb.js";
import type { ConnectRouter } from "@connectrpc/connect";
import { NodeService } from "../../gen/conductor/v1/node_pb.js";
import {
  OrchestratorService,
  type TaskTypeSchema,
} from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { invalid } from "../shared/errors.ts";
import { submitEach } from "./submit-stream.ts";
import { checkLabels } from "./validate.ts";
import type { Orchestrator } from "./orchestrator.ts";
import type { RegisteredType } from "./task-types.ts";

const MAX_PAGE = 1000;
/** Most labels one ListTasks request may filter by. */
const MAX_LABEL_FILTERS = 16;
/** Most bytes of tasks in one ListTasks page: half a gRPC client's 4 MiB default. */
export const MAX_PAGE_BYTES = 2 * 1024 * 1024;
/** Longest id or page token a request may carry (ids are UUIDs, tokens short numbers). */
const MAX_ID_BYTES = 64;

/** The OrchestratorService handlers: thin, over the Orchestrator domain object. */
export function orchestratorRoutes(orch: Orchestrator) {
  return (router: ConnectRouter) =>
    router.service(OrchestratorService, {
      submitTask(req, ctx) {
        return orch.submitChecked(req.spec, ctx.signal);
      },
      submitTasks(requests, ctx) {
        return submitEach(requests, (spec) => orch.submitChecked(spec, ctx.signal), {
          signal: ctx.signal,
          log: orch.log,
        });
      },
      getTask(req) {
        return { task: orch.get(givenId("id", req.id)) };
      },
      listTasks(req) {
        if (req.pageSize < 0 || req.pageSize > MAX_PAGE) {
          throw invalid(
            `page_size must be between 0 (default 100) and ${MAX_PAGE}, got ${req.pageSize}`,
          );
        }
        checkLabels(req.labels, "labels", MAX_LABEL_FILTERS);
        const unknown = req.states.find((s) => !(s in TaskState));
        if (unknown !== undefined) throw invalid(`states: ${unknown} is no TaskState`);
        const page = orch.store.list(req.states, req.pageSize || 100, pageToken(req.pageToken), {
          groupId: shortId("group_id", req.groupId),
          labels: req.labels,
        });
        const count = fitting(page.tasks, TaskSchema);
        const next = count < page.tasks.length ? page.seqs[count - 1] : page.next;
        return {
          tasks: page.tasks.slice(0, count),
          nextPageToken: next !== undefined ? String(next) : "",
        };
      },
      async *getTaskOutput(req, ctx) {
        const chunks = orch.output(givenId("task_id", req.taskId), Number(req.eventSeq));
        for (const text of chunks) {
          if (ctx.signal.aborted) return;
          yield { text };
        }
      },
      async *getTaskPatch(req, ctx) {
        for await (const chunk of orch.patch(givenId("task_id", req.taskId), ctx.signal)) {
          yield { chunk };
        }
      },
      async *watchTask(req, ctx) {
        if (req.afterSeq < 0n) throw invalid(`after_seq must be 0 or more, got ${req.afterSeq}`);
        for await (const event of orch.watch(givenId("id", req.id), ctx.signal, req.afterSeq))
          yield { event };
      },
      listTaskEvents(req) {
        if (req.pageSize < 0 || req.pageSize > MAX_PAGE) {
          throw invalid(
            `page_size must be between 0 (default 200) and ${MAX_PAGE}, got ${req.pageSize}`,
          );
        }
        if (req.beforeSeq < 0n) throw invalid(`before_seq must be 0 or more, got ${req.beforeSeq}`);
        orch.get(givenId("id", req.id));
        return orch.store.eventPageBefore(req.id, req.beforeSeq, {
          maxEvents: req.pageSize || 200,
          maxBytes: MAX_PAGE_BYTES,
        });
      },
      async *watchTasks(_req, ctx) {
        for await (const task of orch.events.watchAll(ctx.signal)) yield task ? { task } : {};
      },
      async cancelTask(req) {
        return { task: await orch.cancel(givenId("id", req.id)) };
      },
      listAgents() {
        return { agents: orch.agents() };
      },
      getStats() {
        return orch.stats();
      },
      listNodes() {
        return { nodes: orch.fleet.list() };
      },
      drainNode(req) {
        return { node: orch.fleet.drain(givenId("name", req.name), true) };
      },
      undrainNode(req) {
        return { node: orch.fleet.drain(givenId("name", req.name), false) };
      },
      submitTaskGroup(req, ctx) {
        return orch.submitGroup(req.spec, ctx.signal);
      },
      getTaskGroup(req) {
        return { group: orch.groups.get(givenId("id", req.id)) };
      },
      listTaskGroups(req) {
        if (req.pageSize < 0 || req.pageSize > MAX_PAGE) {
          throw invalid(
            `page_size must be between 0 (default 100) and ${MAX_PAGE}, got ${req.pageSize}`,
          );
        }
        const page = orch.groups.list(req.pageSize || 100, pageToken(req.pageToken));
        const count = fitting(page.groups, TaskGroupSchema);
        const next = count < page.groups.length ? page.seqs[count - 1] : page.next;
        return {
          groups: page.groups.slice(0, count),
          nextPageToken: next !== undefined ? String(next) : "",
        };
      },
      async *watchTaskGroup(req, ctx) {
        yield* orch.groups.watch(givenId("id", req.id), ctx.signal);
      },
      async cancelTaskGroup(req) {
        return { group: await orch.groups.cancel(givenId("id", req.id)) };
      },
      listTaskTypes() {
        return { types: orch.types.list().map(typeMessage) };
      },
    });
}

/**
 * How many of `items` (at least one) a page holds before it passes MAX_PAGE_BYTES, so it fits
 * any gRPC client's 4 MiB limit.
 */
function fitting<T extends Message>(items: T[], schema: GenMessage<T>): number {
  let bytes = 0;
  let count = 0;
  for (const item of items) {
    bytes += toBinary(schema, item).length + 8;
    if (count > 0 && bytes > MAX_PAGE_BYTES) break;
    count++;
  }
  return count;
}

/** A page token as given out (a row's sequence number); undefined for the first page. */
function pageToken(token: string): number | undefined {
  if (!token) return undefined;
  const before = /^[1-9][0-9]{0,15}$/.test(token) ? Number(token) : NaN;
  if (!Number.isSafeInteger(before)) {
    throw invalid("page_token is not one this server gave out; pass next_page_token unchanged");
  }
  return before;
}

/** A registered task type as ListTaskTypes gives it. */
function typeMessage({
  type,
  source,
  schema,
}: RegisteredType): MessageInitShape<typeof TaskTypeSchema> {
  return {
    name: type.name,
    description: type.description ?? "",
    parameters: (type.parameters ?? []).map((p) => ({
      name: p.name,
      kind: p.kind,
      description: p.description ?? "",
      required: p.required ?? false,
      defaultValue: p.default ?? "",
      values: [...(p.values ?? [])],
    })),
    defaultTools: [...(type.tools ?? [])],
    permissionMode: type.permissionMode ?? "",
    resultSchema: schema?.json ?? "",
    source,
  };
}

/** A filter's id as given ("" for none), refused when it could not be one this server made. */
function shortId(field: string, id: string): string {
  if (Buffer.byteLength(id, "utf8") > MAX_ID_BYTES) {
    throw invalid(
      `${field} is ${Buffer.byteLength(id, "utf8")} bytes; ids and names are at most ${MAX_ID_BYTES}`,
    );
  }
  return id;
}

/** The id a call is about: refused (INVALID_ARGUMENT) when empty or longer than any made here. */
function givenId(field: string, id: string): string {
  if (!id) throw invalid(`${field} is required`);
  return shortId(field, id);
}

/**
 * The NodeService handlers, for AgentHosts that joined over TCP. The authorisation interceptor
 * has checked that the caller's certificate names the node each request speaks for.
 */
export function nodeRoutes(orch: Orchestrator) {
  return (router: ConnectRouter) =>
    router.service(NodeService, {
      registerNode(req) {
        return orch.fleet.register(req, Date.now());
      },
      heartbeat(req) {
        return orch.fleet.heartbeat(req, Date.now());
      },
      reportOutcome(req) {
        orch.fleet.reportOutcome(req.name, req.run, req.outcome);
        return {};
      },
    });
}
