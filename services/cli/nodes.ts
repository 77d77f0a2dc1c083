import { toJson } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { NodeSchema, NodeState, type Node } from "../../gen/conductor/v1/node_pb.js";
import type { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { UsageError, type ParsedCommand } from "./args.ts";
import { millis, printable, table } from "./format.ts";

/** `conductor nodes [drain|undrain NAME]`: lists the nodes, or drains or undrains one. */
export async function nodes(
  client: Client<typeof OrchestratorService>,
  p: ParsedCommand,
  asJson: boolean,
  out: (line: string) => void,
): Promise<number> {
  const [verb, name, ...rest] = p.positionals;
  if (verb !== undefined) {
    if ((verb !== "drain" && verb !== "undrain") || !name || rest.length > 0)
      throw new UsageError("usage: conductor nodes [drain|undrain <name>]");
    const { node } =
      verb === "drain" ? await client.drainNode({ name }) : await client.undrainNode({ name });
    out(
      asJson
        ? JSON.stringify(toJson(NodeSchema, node!))
        : `${printable(node!.name)} ${stateOf(node!)}`,
    );
    return 0;
  }
  const { nodes: list } = await client.listNodes({});
  if (asJson) {
    list.forEach((n) => out(JSON.stringify(toJson(NodeSchema, n))));
    return 0;
  }
  const rows = list.map((n) => [
    printable(n.name),
    stateOf(n),
    `${n.agentsBusy}/${n.agentsTotal}`,
    `${round(n.used?.cpus ?? 0)}/${round(n.capacity?.cpus ?? 0)}`,
    `${gib(n.used?.memoryBytes ?? 0n)}/${gib(n.capacity?.memoryBytes ?? 0n)}`,
    printable(
      Object.entries(n.labels)
        .map(([k, v]) => `${k}=${v}`)
        .join(","),
    ) || "-",
    lease(n),
    printable(n.runtime) || "-",
    printable(n.version) || "-",
  ]);
  table(
    ["NODE", "STATE", "BUSY", "CPUS", "MEMORY (GiB)", "LABELS", "LEASE", "RUNTIME", "VERSION"],
    rows,
  ).forEach((l) => out(l));
  return 0;
}

function stateOf(n: Node): string {
  return (NodeState[n.state] ?? "unspecified").toLowerCase();
}

function round(n: number): string {
  return String(Math.round(n * 10) / 10);
}

function gib(bytes: bigint): string {
  return round(Number(bytes) / 1024 ** 3);
}

/** A joined node's lease as "12 s left" (or "lapsed"); "-" for a local node. */
function lease(n: Node, now = Date.now()): string {
  const at = millis(n.leaseExpireTime);
  if (at === undefined) return "-";
  const left = Math.round((at - now) / 1000);
  return left > 0 ? `${left} s left` : "lapsed";
}
