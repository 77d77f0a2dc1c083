import { AgentState } from "../../gen/conductor/v1/agent_pb.js";
import type { Task, TaskSpec } from "../../gen/conductor/v1/task_pb.js";
import { precondition } from "../shared/errors.ts";
import type { AgentRef, HostLink, NodeInfo } from "./hosts.ts";

/** Resources asked for or in use: CPUs and bytes of memory. */
export interface Use {
  cpus: number;
  memoryBytes: bigint;
}

/**
 * Why a node can never take a task (its labels do not match the node_selector, or it offers
 * less than the task asks for), or undefined when it could. A node that offers 0 of a
 * resource said nothing of it and is not held to it.
 */
export function misfit(info: NodeInfo, spec: TaskSpec): string | undefined {
  for (const [k, v] of Object.entries(spec.nodeSelector)) {
    if (info.labels[k] !== v)
      return `label ${k}=${v} wanted, ${k in info.labels ? `it has ${k}=${info.labels[k]}` : "it has none"}`;
  }
  const r = spec.resources;
  if (r && info.cpus > 0 && r.cpus > info.cpus)
    return `${r.cpus} CPUs asked, it offers ${info.cpus}`;
  if (r && info.memoryBytes > 0n && r.memoryBytes > info.memoryBytes)
    return `${bytes(r.memoryBytes)} of memory asked, it offers ${bytes(info.memoryBytes)}`;
  return undefined;
}

/**
 * Refuses (FAILED_PRECONDITION) a task no known node could ever take, naming each node's
 * reason. Nodes not yet heard from do not count; with none known, every task may wait.
 */
export function checkPlaceable(links: HostLink[], spec: TaskSpec): void {
  const asks = Object.keys(spec.nodeSelector).length > 0 || spec.resources !== undefined;
  const known = links.filter((l) => l.info);
  if (!asks || known.length === 0) return;
  const reasons: string[] = [];
  for (const l of known) {
    const why = misfit(l.info!, spec);
    if (!why) return;
    reasons.push(`${l.name}: ${why}`);
  }
  throw precondition(`no node can take this task (${reasons.join("; ")})`);
}

/**
 * Pairs queued tasks (in queue order) with free agents: only on a node whose labels match the
 * task's node_selector and whose offer, less what its running tasks asked for (`used`), holds
 * what the task asks; among those, the least loaded node (busy share of its agents). A task
 * of a group in `spreading` (TaskGroupSpec.spread) goes first to the node running the fewest
 * of its group's members (counts by host address). No task goes to an agent `avoid` names
 * for it (agent keys). A task that fits nowhere now is left queued; the others go on.
 */
export function place(
  tasks: Task[],
  free: AgentRef[],
  used: (host: string) => Use,
  spreading: Map<string, Map<string, number>> = new Map(),
  avoid: (task: Task) => ReadonlySet<string> | undefined = () => undefined,
): [Task, AgentRef][] {
  const left = [...free];
  const taken = new Map<HostLink, Use & { busy: number }>();
  const load = (l: HostLink) => {
    let t = taken.get(l);
    if (!t) {
      const u = used(l.address);
      const busy = l.agents.filter((a) => a.state !== AgentState.IDLE).length;
      t = { ...u, busy };
      taken.set(l, t);
    }
    return t;
  };
  const pairs: [Task, AgentRef][] = [];
  for (const task of tasks) {
    if (left.length === 0) break;
    const spec = task.spec!;
    const ask = spec.resources;
    const members = spreading.get(task.groupId);
    const avoided = avoid(task);
    let best: { at: number; mine: number; share: number } | undefined;
    left.forEach((ref, at) => {
      const l = ref.host;
      if (avoided?.has(ref.key) || (l.info && misfit(l.info, spec))) return;
      const t = load(l);
      if (ask && l.info) {
        if (l.info.cpus > 0 && t.cpus + ask.cpus > l.info.cpus) return;
        if (l.info.memoryBytes > 0n && t.memoryBytes + ask.memoryBytes > l.info.memoryBytes) return;
      }
      const share = t.busy / Math.max(1, l.agents.length);
      const mine = members?.get(l.address) ?? 0;
      if (!best || mine < best.mine || (mine === best.mine && share < best.share))
        best = { at, mine, share };
    });
    if (!best) continue;
    const [ref] = left.splice(best.at, 1) as [AgentRef];
    members?.set(ref.host.address, best.mine + 1);
    const t = load(ref.host);
    t.busy++;
    t.cpus += ask?.cpus ?? 0;
    t.memoryBytes += ask?.memoryBytes ?? 0n;
    pairs.push([task, ref]);
  }
  return pairs;
}

function bytes(n: bigint): string {
  const gib = Number(n) / 1024 ** 3;
  return gib >= 1 ? `${Math.round(gib * 10) / 10} GiB` : `${Number(n)} bytes`;
}
