// Which node each agent runs on, from ListAgents, refreshed while a view shows it.
import type { Agent } from "../../../gen/conductor/v1/agent_pb.js";
import { useApi, usePoll } from "../context.ts";

/** Every agent by id, refreshed every `everyMs`; empty until the first answer. */
export function useAgents(everyMs = 5_000): ReadonlyMap<string, Agent> {
  const api = useApi();
  const { value } = usePoll(
    async (signal) => new Map((await api.listAgents({}, { signal })).agents.map((a) => [a.id, a])),
    everyMs,
    [api],
  );
  return value ?? EMPTY;
}
const EMPTY: ReadonlyMap<string, Agent> = new Map();
