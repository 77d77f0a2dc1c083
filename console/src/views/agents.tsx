// Agents and nodes: ListAgents and ListNodes, read again every few seconds (the API has no
// stream of them).
import { AgentState } from "../../../gen/conductor/v1/agent_pb.js";
import { NodeState, type Node } from "../../../gen/conductor/v1/node_pb.js";
import { useApi, useNow, usePoll } from "../context.ts";
import { ago, millis } from "../format.ts";

/** The agents & nodes view, `/agents`. */
export function AgentsView() {
  const api = useApi();
  const now = useNow();
  const agents = usePoll(async (signal) => (await api.listAgents({}, { signal })).agents, 2_000, [
    api,
  ]);
  const nodes = usePoll(async (signal) => (await api.listNodes({}, { signal })).nodes, 2_000, [
    api,
  ]);
  return (
    <section>
      <h1>Nodes</h1>
      {nodes.error && <p class="error">{nodes.error}</p>}
      <table data-testid="nodes">
        <thead>
          <tr>
            <th>Node</th>
            <th>State</th>
            <th>Address</th>
            <th>Runtime</th>
            <th>Agents busy</th>
            <th>CPUs used</th>
            <th>Memory used</th>
            <th>Lease</th>
            <th>Last seen</th>
            <th>Labels</th>
          </tr>
        </thead>
        <tbody>
          {(nodes.value ?? []).map((n) => (
            <tr key={n.name} data-node={n.name}>
              <td>{n.name}</td>
              <td>{NodeState[n.state]}</td>
              <td>{n.address || "local"}</td>
              <td>{n.runtime}</td>
              <td>
                {n.agentsBusy} of {n.agentsTotal}
              </td>
              <td>{cpus(n)}</td>
              <td>{memory(n)}</td>
              <td>{lease(n, now)}</td>
              <td>{ago(n.lastSeenTime, now)}</td>
              <td>
                {Object.entries(n.labels)
                  .map(([k, v]) => `${k}=${v}`)
                  .join(", ")}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <h1>Agents</h1>
      {agents.error && <p class="error">{agents.error}</p>}
      <table data-testid="agents">
        <thead>
          <tr>
            <th>Agent</th>
            <th>Node</th>
            <th>State</th>
            <th>Current task</th>
            <th>Runtime</th>
            <th>Tasks done</th>
          </tr>
        </thead>
        <tbody>
          {(agents.value ?? []).map((a) => (
            <tr key={a.id} data-agent={a.id}>
              <td>{a.id}</td>
              <td>{a.nodeId || "local"}</td>
              <td>{AgentState[a.state]}</td>
              <td>
                {a.taskId ? <a href={`/tasks/${encodeURIComponent(a.taskId)}`}>{a.taskId}</a> : "-"}
              </td>
              <td>{a.runtime}</td>
              <td>{String(a.tasksCompleted)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function cpus(n: Node): string {
  const cap = n.capacity?.cpus ?? 0;
  return cap ? `${(n.used?.cpus ?? 0).toFixed(1)} of ${cap.toFixed(1)}` : "-";
}

function memory(n: Node): string {
  const cap = Number(n.capacity?.memoryBytes ?? 0n);
  const gib = (b: number) => `${(b / 1024 ** 3).toFixed(1)} GiB`;
  return cap ? `${gib(Number(n.used?.memoryBytes ?? 0n))} of ${gib(cap)}` : "-";
}

/** When the node's lease runs out: "in 12 s", "expired 3 s ago", "-" (a local node has none). */
function lease(n: Node, now: number): string {
  const at = millis(n.leaseExpireTime);
  if (at === undefined) return "-";
  const s = Math.round((at - now) / 1000);
  return s >= 0 ? `in ${s} s` : `expired ${-s} s ago`;
}
