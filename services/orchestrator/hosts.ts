import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { AgentHostService } from "../../gen/conductor/v1/agent_host_pb.js";
import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import type { Logger } from "../shared/log.ts";
import { unixTransport } from "../shared/transport.ts";

/** An agent as the Orchestrator sees it: where it lives and what it reported last. */
export interface AgentRef {
  key: string;
  host: HostLink;
  agent: Agent;
}

/** One AgentHost the Orchestrator schedules onto, reached over its Unix socket. */
export class HostLink {
  readonly client: Client<typeof AgentHostService>;
  readonly address: string;
  agents: Agent[] = [];
  reachable = false;
  /** The poll (HostRegistry.generation) whose answer `agents` holds; 0 before any answer. */
  answeredIn = 0;

  constructor(address: string, interceptors: Interceptor[] = []) {
    this.address = address;
    this.client = createClient(AgentHostService, unixTransport(address, interceptors));
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

  constructor(
    addresses: string[],
    timeoutMs: number,
    log: Logger,
    interceptors: Interceptor[] = [],
  ) {
    this.links = addresses.map((a) => new HostLink(a, interceptors));
    this.timeoutMs = timeoutMs;
    this.log = log;
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
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.polling;
  }

  /** The link to the host at `address`, if it is configured. */
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
        try {
          const res = await link.client.listAgents({}, { timeoutMs: this.timeoutMs });
          if (!link.reachable)
            this.log.info("agent host reachable", {
              host: link.address,
              agents: res.agents.length,
            });
          link.agents = res.agents;
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

  /** Every agent on every reachable host. */
  all(): AgentRef[] {
    return this.links.flatMap((host) =>
      host.agents.map((agent) => ({ key: `${host.address}#${agent.id}`, host, agent })),
    );
  }

  /** Agents their host reports idle, least used first. */
  idle(): AgentRef[] {
    return this.all()
      .filter((r) => r.agent.state === AgentState.IDLE)
      .sort(
        (a, b) =>
          Number(a.agent.tasksCompleted - b.agent.tasksCompleted) || a.key.localeCompare(b.key),
      );
  }
}
