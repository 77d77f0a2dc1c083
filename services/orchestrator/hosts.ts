import type tls from "node:tls";
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { AgentHostService } from "../../gen/conductor/v1/agent_host_pb.js";
import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import type { Logger } from "../shared/log.ts";
import { closedTransport, tunnelTransport } from "../shared/tcp.ts";
import { peerCertificate } from "../shared/tls.ts";
import { unixTransport } from "../shared/transport.ts";

/** What a node says of itself (a joined node at RegisterNode, a local one at GetCapacity). */
export interface NodeInfo {
  name: string;
  runtime: string;
  version: string;
  labels: Record<string, string>;
  cpus: number;
  memoryBytes: bigint;
  agentsTotal: number;
}

/** A node that joined over TCP: its lease and its tunnel. */
export interface Joined {
  /** When the lease lapses unless renewed (ms since the epoch). */
  leaseExpires: number;
  lastSeen: number;
  /** The tunnel the node dialled; calls go over it. */
  socket?: tls.TLSSocket | undefined;
  /** The AgentHost run holding the lease (RegisterNodeRequest.instance_id). */
  instance: string;
  /** When the certificate of that tunnel expires (ms since the epoch). */
  certificateExpires?: number | undefined;
  /** Heartbeats taken from it so far (from this Orchestrator's start). */
  beats: number;
  /** The runs its latest heartbeat listed, as `runKey`s. */
  runs: Set<string>;
}

/** A run's key in Joined.runs. */
export function runKey(taskId: string, attempt: number): string {
  return `${taskId}#${attempt}`;
}

/** An agent as the Orchestrator sees it: where it lives and what it reported last. */
export interface AgentRef {
  key: string;
  host: HostLink;
  agent: Agent;
}

/**
 * One AgentHost the Orchestrator schedules onto: a local one reached over its Unix socket
 * (`address` is the socket), or a node that joined over TCP (`address` is its name, and
 * calls go over the tunnel it dialled).
 */
export class HostLink {
  client: Client<typeof AgentHostService>;
  readonly address: string;
  agents: Agent[] = [];
  reachable = false;
  /** The poll (HostRegistry.generation) whose answer `agents` holds; 0 before any answer. */
  answeredIn = 0;
  /** What the node says of itself; undefined until a local node first answers GetCapacity. */
  info: NodeInfo | undefined;
  /** Set for a node that joined over TCP. */
  joined: Joined | undefined;
  /** A joined node whose lease lapsed: its attempts were ended; it takes nothing until it rejoins. */
  lost = false;
  /** Takes no new task (`conductor nodes drain`). */
  drained = false;

  constructor(address: string, interceptors: Interceptor[] = [], transport?: Transport) {
    this.address = address;
    this.client = createClient(AgentHostService, transport ?? unixTransport(address, interceptors));
  }

  /** The node's name: a joined node's from its certificate, a local one's node id once known. */
  get name(): string {
    return this.joined ? this.address : (this.info?.name ?? this.address);
  }

  /** Whether new tasks may go here. */
  get schedulable(): boolean {
    return this.reachable && !this.lost && !this.drained;
  }

  /** Calls go over `socket` (by `client`) from now on; the old tunnel ends. */
  useTunnel(socket: tls.TLSSocket, client: Client<typeof AgentHostService>): void {
    const joined = this.joined!;
    const old = joined.socket;
    joined.socket = socket;
    this.client = client;
    old?.destroy();
  }
}

/**
 * Keeps the list of agents on every configured AgentHost fresh by polling, and tells the
 * scheduler when it changes. A host that does not answer contributes no agents.
 */
export class HostRegistry {
  readonly links: HostLink[];
  /** Polls begun so far: an answer from a poll numbered above N was given after poll N began. */
  generation = 0;
  private polling: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly log: Logger;
  private readonly timeoutMs: number;
  private readonly interceptors: Interceptor[];
  /** Told of an agent (`<host>#<agent>`) a poll finds IDLE after the one before found it FAILED. */
  recovered: ((key: string) => void) | undefined;

  constructor(
    addresses: string[],
    timeoutMs: number,
    log: Logger,
    interceptors: Interceptor[] = [],
  ) {
    this.links = addresses.map((a) => new HostLink(a, interceptors));
    this.timeoutMs = timeoutMs;
    this.log = log;
    this.interceptors = interceptors;
  }

  /**
   * A node joins (or rejoins) with a lease of `ttlMs`: known again, not lost, its tunnel to come.
   * A name that is a local host's is refused (the caller says so).
   */
  join(info: NodeInfo, instance: string, now: number, ttlMs: number): HostLink {
    let link = this.link(info.name);
    if (!link) {
      link = new HostLink(
        info.name,
        this.interceptors,
        closedTransport("the node's tunnel is not open yet"),
      );
      this.links.push(link);
    }
    link.joined ??= { leaseExpires: 0, lastSeen: 0, instance, beats: 0, runs: new Set() };
    link.joined.instance = instance;
    if (link.lost) this.log.info("node rejoined", { node: info.name });
    link.lost = false;
    link.info = info;
    link.joined.leaseExpires = now + ttlMs;
    link.joined.lastSeen = now;
    return link;
  }

  /** Renews a joined node's lease; false when it is unknown or lost (it must register again). */
  renew(name: string, now: number, ttlMs: number): HostLink | undefined {
    const link = this.link(name);
    if (!link?.joined || link.lost) return undefined;
    link.joined.leaseExpires = now + ttlMs;
    link.joined.lastSeen = now;
    return link;
  }

  /**
   * A joined node's tunnel arrived: once it answers as the AgentHost run that holds the lease,
   * calls go over it. Resolves to why it was refused (then closed), or undefined.
   */
  async attachTunnel(name: string, socket: tls.TLSSocket): Promise<string | undefined> {
    const link = this.link(name);
    if (!link?.joined || link.lost) return "not registered";
    const client = createClient(AgentHostService, tunnelTransport(socket, this.interceptors));
    let instance = "";
    try {
      instance = (await client.getCapacity({}, { timeoutMs: this.timeoutMs })).instanceId;
    } catch (e) {
      return `it did not answer (${e instanceof Error ? e.message : String(e)})`;
    }
    if (!link.joined || link.lost || instance !== link.joined.instance)
      return `it is not the AgentHost run that holds the lease (${instance || "none"})`;
    link.useTunnel(socket, client);
    const cert = peerCertificate(socket);
    link.joined.certificateExpires = cert ? Date.parse(cert.validTo) : undefined;
    socket.once("close", () => {
      if (link.joined?.socket !== socket) return;
      link.joined.socket = undefined;
      link.reachable = false;
      link.agents = [];
    });
    return undefined;
  }

  /**
   * Joined nodes whose lease lapsed by `now` become lost: their tunnel is cut (streams over it
   * end) and they take nothing until they register again. Returns their names.
   */
  expire(now: number): string[] {
    const lost: string[] = [];
    for (const link of this.links) {
      if (!link.joined || link.lost || link.joined.leaseExpires > now) continue;
      link.lost = true;
      link.reachable = false;
      link.agents = [];
      link.joined.socket?.destroy();
      link.joined.socket = undefined;
      lost.push(link.address);
    }
    return lost;
  }

  /** Polls every intervalMs, calling onChange after each poll; a poll still under way is not doubled. */
  start(intervalMs: number, onChange: () => void): void {
    const poll = () => {
      if (this.polling) return;
      this.refresh()
        .then(onChange)
        .catch((e: unknown) => this.log.error("polling the agent hosts failed", { error: e }));
    };
    poll();
    this.timer = setInterval(poll, intervalMs);
  }

  /** Stops polling; resolves once a poll under way has ended. */
  /** Stops polling and cuts every joined node's tunnel (the nodes dial again, elsewhere or later). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    for (const link of this.links) link.joined?.socket?.destroy();
    await this.polling;
  }

  /** The link to the host at `address` (a socket, or a joined node's name), if known. */
  link(address: string): HostLink | undefined {
    return this.links.find((l) => l.address === address);
  }

  /** Asks every host for its agents (joining a poll already under way). */
  refresh(): Promise<void> {
    this.polling ??= this.poll().finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async poll(): Promise<void> {
    const generation = ++this.generation;
    await Promise.all(
      this.links.map(async (link) => {
        if (link.joined && (link.lost || !link.joined.socket)) return; // nothing to ask over
        try {
          const res = await link.client.listAgents({}, { timeoutMs: this.timeoutMs });
          if (!link.reachable && !link.joined) await this.describe(link);
          if (!link.reachable)
            this.log.info("agent host reachable", {
              host: link.address,
              agents: res.agents.length,
            });
          const failed = new Set(
            link.agents.filter((a) => a.state === AgentState.FAILED).map((a) => a.id),
          );
          link.agents = res.agents;
          for (const a of res.agents)
            if (a.state === AgentState.IDLE && failed.has(a.id))
              this.recovered?.(`${link.address}#${a.id}`);
          link.reachable = true;
          link.answeredIn = generation;
        } catch (e) {
          if (link.reachable)
            this.log.warn("agent host unreachable", { host: link.address, error: e });
          link.agents = [];
          link.reachable = false;
        }
      }),
    );
  }

  /**
   * A local node says what it is (capacity, labels) each time it comes back; one that cannot
   * (an older AgentHost) keeps what it said before, or nothing: it is then held to no limits.
   */
  private async describe(link: HostLink): Promise<void> {
    try {
      const cap = await link.client.getCapacity({}, { timeoutMs: this.timeoutMs });
      link.info = {
        name: cap.nodeId,
        runtime: cap.runtime,
        version: cap.version,
        labels: cap.labels,
        cpus: cap.cpus,
        memoryBytes: cap.memoryBytes,
        agentsTotal: cap.agentsTotal,
      };
    } catch (e) {
      this.log.debug("agent host did not say what it offers", { host: link.address, error: e });
    }
  }

  /** Every agent on every reachable host. */
  all(): AgentRef[] {
    return this.links.flatMap((host) =>
      host.agents.map((agent) => ({ key: `${host.address}#${agent.id}`, host, agent })),
    );
  }

  /** Agents their host reports idle on nodes that take new tasks, least used first. */
  idle(): AgentRef[] {
    return this.all()
      .filter((r) => r.agent.state === AgentState.IDLE && r.host.schedulable)
      .sort(
        (a, b) =>
          Number(a.agent.tasksCompleted - b.agent.tasksCompleted) || a.key.localeCompare(b.key),
      );
  }
}
