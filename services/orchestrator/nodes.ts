import type tls from "node:tls";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentState } from "../../gen/conductor/v1/agent_pb.js";
import type { RunOutcome } from "../../gen/conductor/v1/agent_host_pb.js";
import {
  NodeSchema,
  NodeState,
  type HeartbeatRequest,
  type HeartbeatResponse,
  type Node,
  type RegisterNodeRequest,
  type RegisterNodeResponse,
  type RunRef,
} from "../../gen/conductor/v1/node_pb.js";
import { ResourcesSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { invalid, notFound, precondition } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import type { Identity } from "../shared/tls.ts";
import { runKey, type HostLink, type HostRegistry } from "./hosts.ts";
import { FINAL_STATES, type TaskStore } from "./store.ts";
import { CONTROL } from "./validate.ts";

/** Most labels a node may have, and their sizes (as a task's labels). */
const MAX_LABELS = 64;
const MAX_LABEL_KEY_BYTES = 128;
const MAX_LABEL_VALUE_BYTES = 256;
/** Most runs one heartbeat may list (a node has at most 1000 agents). */
const MAX_HEARTBEAT_RUNS = 1000;
/** Heartbeats per lease: a node renews this often, so a few lost ones do not lose it. */
const HEARTBEATS_PER_LEASE = 5;

/** What the Fleet works with. */
export interface FleetOptions {
  hosts: HostRegistry;
  store: TaskStore;
  /** orchestrator.node_lease_seconds, in ms. */
  leaseTtlMs: number;
  log: Logger;
  /** Takes a reported outcome of a run whose stream was gone; false if nobody waits for it. */
  report: (node: string, run: RunRef, outcome: RunOutcome) => boolean;
  /** Resources the attempts running on a node asked for. */
  used: (node: string) => { cpus: number; memoryBytes: bigint };
}

const ACTIVE = new Set([TaskState.SCHEDULED, TaskState.RUNNING]);

/**
 * The nodes of the fleet as the Orchestrator keeps them: joined nodes' registration, leases,
 * tunnels and reports (NodeService), and draining for every node. Leases lapse in
 * HostRegistry.expire; what that means for attempts is the AttemptRunner's.
 */
export class Fleet {
  private readonly opts: FleetOptions;

  constructor(opts: FleetOptions) {
    this.opts = opts;
    const drained = opts.store.drainedNodes();
    for (const link of opts.hosts.links) link.drained = drained.has(link.address);
  }

  /**
   * After a restart: every joined node that held a running attempt gets one lease from `now`
   * to register again; one that does not is lost (its attempts end and are retried).
   */
  awaitRejoin(now: number): void {
    const { hosts, store } = this.opts;
    for (const task of store.inStates([...ACTIVE])) {
      const name = store.attemptHost(task.id);
      if (!name || hosts.link(name) || name.includes("/")) continue; // a local socket, or known
      hosts.join(
        { name, runtime: "", version: "", labels: {}, cpus: 0, memoryBytes: 0n, agentsTotal: 0 },
        "",
        now,
        this.opts.leaseTtlMs,
      );
    }
  }

  /** RegisterNode: the caller's certificate names it `req.name` (the interceptor checked). */
  register(req: RegisterNodeRequest, now: number): RegisterNodeResponse {
    checkNode(req);
    const existing = this.opts.hosts.link(req.name);
    if (existing && !existing.joined) {
      throw precondition(
        `node name "${req.name}" is a local agent host's socket here; issue the joining node a certificate with another name`,
      );
    }
    const held = existing?.joined;
    if (
      held &&
      !existing.lost &&
      held.instance &&
      held.instance !== req.instanceId &&
      held.leaseExpires > now
    ) {
      throw new ConnectError(
        `node ${req.name} is already joined by another AgentHost (its lease runs ${Math.ceil((held.leaseExpires - now) / 1000)} s more): two AgentHosts may not use one certificate; issue this one its own name`,
        Code.AlreadyExists,
      );
    }
    const link = this.opts.hosts.join(
      {
        name: req.name,
        runtime: req.runtime,
        version: req.version,
        labels: req.labels,
        cpus: req.capacity?.cpus ?? 0,
        memoryBytes: req.capacity?.memoryBytes ?? 0n,
        agentsTotal: req.agentsTotal,
      },
      req.instanceId,
      now,
      this.opts.leaseTtlMs,
    );
    link.drained = this.opts.store.drainedNodes().has(req.name);
    this.opts.log.info("node registered", {
      node: req.name,
      runtime: req.runtime,
      version: req.version,
      agents: req.agentsTotal,
    });
    return {
      $typeName: "conductor.v1.RegisterNodeResponse",
      leaseTtlMs: BigInt(this.opts.leaseTtlMs),
      heartbeatIntervalMs: BigInt(Math.floor(this.opts.leaseTtlMs / HEARTBEATS_PER_LEASE)),
    };
  }

  /**
   * Heartbeat: renews the lease and names the node's runs that are not their task's current
   * attempt on this node (to end at once). FAILED_PRECONDITION for a node that must register.
   */
  heartbeat(req: HeartbeatRequest, now: number): HeartbeatResponse {
    if (req.runs.length > MAX_HEARTBEAT_RUNS)
      throw invalid(`runs lists ${req.runs.length} runs; at most ${MAX_HEARTBEAT_RUNS}`);
    const current = this.opts.hosts.link(req.name)?.joined?.instance;
    if (current && current !== req.instanceId) {
      throw precondition(
        `node ${req.name}'s lease is held by another AgentHost run (instance ${current}), not ${JSON.stringify(req.instanceId.slice(0, 64))}: register again`,
      );
    }
    const link = current ? this.opts.hosts.renew(req.name, now, this.opts.leaseTtlMs) : undefined;
    if (!link) {
      throw precondition(
        `node ${req.name} holds no lease (never registered, or its lease lapsed): register again`,
      );
    }
    link.joined!.beats++;
    link.joined!.runs = new Set(req.runs.map((r) => runKey(r.taskId, r.attempt)));
    const endRuns = req.runs.filter((r) => this.staleness(req.name, r) !== undefined);
    return {
      $typeName: "conductor.v1.HeartbeatResponse",
      leaseTtlMs: BigInt(this.opts.leaseTtlMs),
      endRuns,
      draining: link.drained,
    };
  }

  /**
   * ReportOutcome: accepted only for the task's current attempt on this node. PERMISSION_DENIED
   * when the task is not assigned to it; FAILED_PRECONDITION for a stale fencing token.
   */
  reportOutcome(name: string, run: RunRef | undefined, outcome: RunOutcome | undefined): void {
    if (!run?.taskId || !outcome) throw invalid("run.task_id and outcome are required");
    if (!FINAL_STATES.has(outcome.state))
      throw invalid(
        `outcome.state must be an end (SUCCEEDED, FAILED, CANCELLED or TIMED_OUT), got ${TaskState[outcome.state] ?? outcome.state}`,
      );
    const why = this.staleness(name, run);
    if (why) throw why;
    if (!this.opts.report(name, run, outcome)) {
      this.opts.log.info("a node reported an outcome its stream already gave", {
        node: name,
        task_id: run.taskId,
        attempt: run.attempt,
      });
    }
  }

  /**
   * A node dialled its tunnel: once it answers as the AgentHost run that holds the node's
   * lease, calls to it go over that connection.
   */
  tunnel(socket: tls.TLSSocket, identity: Identity): void {
    const refuse = (why: string) => {
      this.opts.log.warn("refused a node tunnel", { identity: identity.spiffeId, why });
      socket.destroy();
    };
    if (identity.role !== "agent-host") return refuse("not an agent host");
    this.opts.hosts.attachTunnel(identity.name, socket).then(
      (why) => {
        if (why) return refuse(why);
        this.opts.log.info("node tunnel open", { node: identity.name });
        this.opts.hosts.refresh().catch(() => undefined); // the next poll asks again
      },
      (e: unknown) => refuse(String(e)),
    );
  }

  /** Why a run a node reports is not the current attempt on it (undefined when it is). */
  private staleness(name: string, run: RunRef): ConnectError | undefined {
    const task = this.opts.store.get(run.taskId);
    const host = task ? this.opts.store.attemptHost(run.taskId) : "";
    if (!task || run.attempt > task.attempts || (host !== name && run.attempt === task.attempts)) {
      return new ConnectError(
        `task ${run.taskId} attempt ${run.attempt} is not assigned to node ${name}`,
        Code.PermissionDenied,
      );
    }
    if (!ACTIVE.has(task.state) || run.attempt !== task.attempts || host !== name) {
      return precondition(
        `attempt ${run.attempt} of task ${run.taskId} is no longer current (a stale fencing token): the task is at attempt ${task.attempts}, ${TaskState[task.state]}`,
      );
    }
    return undefined;
  }

  /** Every node, joined or local, as ListNodes shows it. */
  list(): Node[] {
    return this.opts.hosts.links.map((l) => this.describe(l));
  }

  /** Stops (or restarts) giving a node new tasks; kept across restarts. NOT_FOUND if unknown. */
  drain(name: string, drained: boolean): Node {
    const link = this.opts.hosts.links.find((l) => l.name === name || l.address === name);
    if (!name || !link) throw notFound("node", name);
    this.opts.store.setDrained(link.address, drained);
    link.drained = drained;
    this.opts.log.info(drained ? "node drained" : "node undrained", { node: link.name });
    return this.describe(link);
  }

  private describe(l: HostLink): Node {
    const used = this.opts.used(l.address);
    const state =
      l.lost || !l.reachable ? NodeState.LOST : l.drained ? NodeState.DRAINING : NodeState.READY;
    return create(NodeSchema, {
      name: l.name,
      state,
      address: l.joined ? "joined" : l.address,
      runtime: l.info?.runtime ?? "",
      version: l.info?.version ?? "",
      labels: l.info?.labels ?? {},
      capacity: create(ResourcesSchema, {
        cpus: l.info?.cpus ?? 0,
        memoryBytes: l.info?.memoryBytes ?? 0n,
      }),
      used: create(ResourcesSchema, used),
      agentsTotal: l.agents.length,
      agentsBusy: l.agents.filter((a) => a.state === AgentState.BUSY).length,
      ...(l.joined
        ? {
            leaseExpireTime: timestampFromMs(l.joined.leaseExpires),
            lastSeenTime: timestampFromMs(l.joined.lastSeen),
            ...(l.joined.certificateExpires
              ? { certificateExpireTime: timestampFromMs(l.joined.certificateExpires) }
              : {}),
          }
        : {}),
    });
  }
}

/** Longest runtime, version or instance id a node may give. */
const MAX_NODE_TEXT = 128;
/** Most CPUs and bytes of memory a node may say it offers (as agent_host.cpus and memory). */
const MAX_NODE_CPUS = 100_000;
const MAX_NODE_MEMORY = 1024n ** 5n;

/** What a registering node says of itself must be sane: bounded, no control characters. */
function checkNode(req: RegisterNodeRequest): void {
  for (const [field, text] of [
    ["runtime", req.runtime],
    ["version", req.version],
    ["instance_id", req.instanceId],
  ] as const) {
    if (Buffer.byteLength(text) > MAX_NODE_TEXT || CONTROL.test(text))
      throw invalid(`${field} must be at most ${MAX_NODE_TEXT} bytes, without control characters`);
  }
  if (!req.instanceId) throw invalid("instance_id is required (a random id of this AgentHost run)");
  const c = req.capacity;
  if (c && (!Number.isFinite(c.cpus) || c.cpus < 0 || c.cpus > MAX_NODE_CPUS))
    throw invalid(`capacity.cpus must be from 0 to ${MAX_NODE_CPUS}, got ${c.cpus}`);
  if (c && (c.memoryBytes < 0n || c.memoryBytes > MAX_NODE_MEMORY))
    throw invalid(
      `capacity.memory_bytes must be from 0 to ${MAX_NODE_MEMORY} (1 PiB), got ${c.memoryBytes}`,
    );
  if (req.agentsTotal < 0 || req.agentsTotal > 1000)
    throw invalid(`agents_total must be from 0 to 1000, got ${req.agentsTotal}`);
  checkLabels(req.labels);
}

function checkLabels(labels: Record<string, string>): void {
  const entries = Object.entries(labels);
  if (entries.length > MAX_LABELS)
    throw invalid(`labels has ${entries.length} entries; at most ${MAX_LABELS}`);
  for (const [k, v] of entries) {
    if (k === "" || Buffer.byteLength(k) > MAX_LABEL_KEY_BYTES || CONTROL.test(k))
      throw invalid(
        `label key ${JSON.stringify(k.slice(0, 40))} must be 1 to ${MAX_LABEL_KEY_BYTES} bytes, without control characters`,
      );
    if (Buffer.byteLength(v) > MAX_LABEL_VALUE_BYTES || CONTROL.test(v))
      throw invalid(
        `label ${JSON.stringify(k)} must be at most ${MAX_LABEL_VALUE_BYTES} bytes, without control characters`,
      );
  }
}
