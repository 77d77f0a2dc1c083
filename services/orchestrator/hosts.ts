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

  /** Polls every intervalMs, calling onChange after each poll. */
  start(intervalMs: number, onChange: () => void): void {
    const poll = () => void this.refresh().then(onChange);
    poll();
    this.timer = setInterval(poll, intervalMs);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Asks every host for its agents. */
  async refresh(): Promise<void> {
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
