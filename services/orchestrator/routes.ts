import type { ConnectRouter } from "@connectrpc/connect";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { invalid } from "../shared/errors.ts";
import type { Orchestrator } from "./orchestrator.ts";

const MAX_PAGE = 1000;

/** The OrchestratorService handlers: thin, over the Orchestrator domain object. */
export function orchestratorRoutes(orch: Orchestrator) {
  return (router: ConnectRouter) =>
    router.service(OrchestratorService, {
      submitTask(req) {
        return orch.submit(req.spec);
      },
      getTask(req) {
        return { task: orch.get(req.id) };
      },
      listTasks(req) {
        if (req.pageSize < 0 || req.pageSize > MAX_PAGE) {
          throw invalid(
            `page_size must be between 0 (default 100) and ${MAX_PAGE}, got ${req.pageSize}`,
          );
        }
        let before: number | undefined;
        if (req.pageToken) {
          before = Number(req.pageToken);
          if (!Number.isSafeInteger(before) || before <= 0) {
            throw invalid(
              "page_token is not one this server gave out; pass next_page_token unchanged",
            );
          }
        }
        const page = orch.store.list(req.states, req.pageSize || 100, before);
        return {
          tasks: page.tasks,
          nextPageToken: page.next !== undefined ? String(page.next) : "",
        };
      },
      async *watchTask(req, ctx) {
        for await (const event of orch.watch(req.id, ctx.signal)) yield { event };
      },
      async cancelTask(req) {
        return { task: await orch.cancel(req.id) };
      },
      listAgents() {
        return { agents: orch.agents() };
      },
      getStats() {
        return orch.stats();
      },
    });
}
