import { create } from "@bufbuild/protobuf";
import { ConnectError, Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { AgentSchema, AgentState } from "../../gen/conductor/v1/agent_pb.js";
import { TaskSchema, TaskSpecSchema, type Task } from "../../gen/conductor/v1/task_pb.js";
import { HostLink, type AgentRef, type NodeInfo } from "./hosts.ts";
import { checkPlaceable, misfit, place } from "./placement.ts";

const GiB = 1024n ** 3n;

function node(name: string, labels: Record<string, string>, cpus: number, memGiB: bigint) {
  const link = new HostLink(`/run/${name}.sock`);
  const info: NodeInfo = {
    name,
    runtime: "process",
    version: "0",
    labels,
    cpus,
    memoryBytes: memGiB * GiB,
    agentsTotal: 2,
  };
  link.info = info;
  link.reachable = true;
  link.agents = [1, 2].map((n) =>
    create(AgentSchema, { id: `${name}:agent-${n}`, nodeId: name, state: AgentState.IDLE }),
  );
  return link;
}

const refs = (links: HostLink[]): AgentRef[] =>
  links.flatMap((host) =>
    host.agents.map((agent) => ({ key: `${host.address}#${agent.id}`, host, agent })),
  );

function task(id: string, fields: Parameters<typeof create<typeof TaskSpecSchema>>[1] = {}): Task {
  return create(TaskSchema, { id, spec: create(TaskSpecSchema, { prompt: "p", ...fields }) });
}

const nothingUsed = () => ({ cpus: 0, memoryBytes: 0n });

describe("placement", () => {
  const gpu = node("gpu", { gpu: "true" }, 8, 64n);
  const small = node("small", {}, 2, 4n);

  it("gives no task an agent it is to avoid", () => {
    const [first, second] = refs([node("retry", {}, 0, 0n)]) as [AgentRef, AgentRef];
    const avoid = () => new Set([first.key]);
    const chosen = place([task("t")], [first, second], nothingUsed, new Map(), avoid);
    expect(chosen.map(([, ref]) => ref.key)).toEqual([second.key]);
    expect(place([task("t")], [first], nothingUsed, new Map(), avoid)).toHaveLength(0);
  });

  it("says why a node can never take a task", () => {
    const spec = (f: object) => create(TaskSpecSchema, { prompt: "p", ...f });
    expect(misfit(small.info!, spec({ nodeSelector: { gpu: "true" } }))).toBe(
      "label gpu=true wanted, it has none",
    );
    expect(misfit(small.info!, spec({ resources: { cpus: 4 } }))).toBe("4 CPUs asked, it offers 2");
    expect(misfit(small.info!, spec({ resources: { memoryBytes: 8n * GiB } }))).toBe(
      "8 GiB of memory asked, it offers 4 GiB",
    );
    expect(
      misfit(gpu.info!, spec({ nodeSelector: { gpu: "true" }, resources: { cpus: 8 } })),
    ).toBeUndefined();
  });

  it("refuses at submit a task no known node could take, naming each node's reason", () => {
    const spec = create(TaskSpecSchema, { prompt: "p", resources: { memoryBytes: 128n * GiB } });
    let err: unknown;
    try {
      checkPlaceable([gpu, small], spec);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((err as ConnectError).rawMessage).toBe(
      "no node can take this task (gpu: 128 GiB of memory asked, it offers 64 GiB; small: 128 GiB of memory asked, it offers 4 GiB)",
    );
    // With no node known yet, every task may wait for one.
    expect(() => checkPlaceable([], spec)).not.toThrow();
  });

  it("puts each task on a node that fits, the least loaded first, and leaves the rest queued", () => {
    const tasks = [
      task("needs-gpu", { nodeSelector: { gpu: "true" } }),
      task("any-1"),
      task("too-big-now", { resources: { cpus: 8 } }),
      task("any-2"),
    ];
    const pairs = place(tasks, refs([gpu, small]), (host) =>
      host === gpu.address ? { cpus: 4, memoryBytes: 0n } : nothingUsed(),
    );
    const where = Object.fromEntries(pairs.map(([t, r]) => [t.id, r.host.name]));
    // gpu has 4 of 8 CPUs left: the 8-CPU task waits; the others go to the less busy node.
    expect(where).toEqual({ "needs-gpu": "gpu", "any-1": "small", "any-2": "gpu" });
  });

  it("does not place onto a node whose resources its other tasks this round took", () => {
    const one = node("one", {}, 2, 8n);
    const pairs = place(
      [task("a", { resources: { cpus: 2 } }), task("b", { resources: { cpus: 1 } })],
      refs([one]),
      nothingUsed,
    );
    expect(pairs.map(([t]) => t.id)).toEqual(["a"]);
  });

  it("spreads a group's members to the node running fewest of them, before the least loaded", () => {
    const a = node("a", {}, 0, 0n);
    const b = node("b", {}, 0, 0n);
    // a: 1 of 2 agents busy with the group's member; b: 1 of 2 busy with another task.
    a.agents[0]!.state = AgentState.BUSY;
    b.agents[0]!.state = AgentState.BUSY;
    const free = refs([a, b]).filter((r) => r.agent.state === AgentState.IDLE);
    const member = () => create(TaskSchema, { ...task("m"), groupId: "g" });
    const onA = new Map([["g", new Map([[a.address, 1]])]]);
    expect(place([member()], free, nothingUsed, onA)[0]![1].host.name).toBe("b");
    // Without spreading, the nodes are equally loaded and the first one takes it.
    expect(place([member()], free, nothingUsed)[0]![1].host.name).toBe("a");
    // Two members in one round: one each.
    const two = place(
      [member(), member()],
      free,
      nothingUsed,
      new Map([["g", new Map<string, number>()]]),
    );
    expect(two.map(([, r]) => r.host.name).sort()).toEqual(["a", "b"]);
  });
});
