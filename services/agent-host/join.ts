import { setTimeout as delay } from "node:timers/promises";
import type tls from "node:tls";
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { AgentHostService } from "../../gen/conductor/v1/agent_host_pb.js";
import { NodeService, type RegisterNodeRequest } from "../../gen/conductor/v1/node_pb.js";
import type { RunOutcome } from "../../gen/conductor/v1/agent_host_pb.js";
import type { Logger } from "../shared/log.ts";
import { dialTls, serveOnTunnel, tlsTransport, TUNNEL_ALPN } from "../shared/tcp.ts";
import { peerIdentity, type TlsMaterial } from "../shared/tls.ts";
import type { AgentHost } from "./host.ts";
import { agentHostRoutes } from "./routes.ts";

/** A node ends its own runs once this share of its lease has passed without a renewal. */
const FENCE_AT = 0.5;
/**
 * A run whose lifeline gets no tick for this share of the lease ends by itself: ticks stop at
 * FENCE_AT at the latest (or when this process freezes), so its run is gone by 0.8 of the lease.
 */
const RUN_IDLE_AT = 0.3;
/** Waits between tries to reach the Orchestrator: from the first, doubling, up to the last. */
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 5_000;
/** Outcomes kept for a report while the Orchestrator is unreachable; older ones are dropped. */
const MAX_PENDING_REPORTS = 1000;

/** What a joining AgentHost needs. */
export interface MembershipOptions {
  /** The Orchestrator's host:port (agent_host.join). */
  address: string;
  material: TlsMaterial;
  host: AgentHost;
  /** What the node says of itself at RegisterNode (name is its certificate's). */
  info: Omit<RegisterNodeRequest, "$typeName" | "name" | "instanceId">;
  interceptors?: Interceptor[];
  log: Logger;
}

/**
 * A joined node's place in the fleet: registers with the Orchestrator, holds the lease by
 * heartbeat, keeps a tunnel open over which the Orchestrator drives this AgentHost, and fences
 * itself: once half the lease has passed without a renewal it ends every run and takes no new
 * one until it holds a lease again, so an attempt never runs here after the Orchestrator has
 * taken this node as lost. Outcomes of runs whose stream was gone are reported when it can.
 */
export class Membership {
  private readonly opts: MembershipOptions;
  private readonly name: string;
  private node: Client<typeof NodeService>;
  private stopWatching: () => void = () => {};
  /** The tunnel open now, if any. */
  private tunnelSocket: tls.TLSSocket | undefined;
  /** The certificate changed: the tunnel is to be opened again once idle. */
  private rotateTunnel = false;
  private readonly stop = new AbortController();
  private loops: Promise<unknown>[] = [];
  private registered = false;
  /** When the last renewal that succeeded was sent (ms, this process's clock). */
  private renewedAt = 0;
  private leaseTtlMs = 0;
  private intervalMs = 1000;
  private fenced = false;
  private readonly reports: { taskId: string; attempt: number; outcome: RunOutcome }[] = [];
  private fenceTimer: NodeJS.Timeout | undefined;
  /** Wakes the tunnel loop when a registration succeeds. */
  private wakeTunnel: () => void = () => {};

  constructor(opts: MembershipOptions) {
    this.opts = opts;
    this.name = opts.material.current().identity.name;
    this.node = this.nodeClient();
  }

  /** A NodeService client on a connection of its own (made with the material's files now). */
  private nodeClient(): Client<typeof NodeService> {
    const o = this.opts;
    return createClient(
      NodeService,
      tlsTransport(o.address, o.material, "orchestrator", o.interceptors ?? []),
    );
  }

  /** Starts joining; returns at once (the node takes work once registered). */
  start(): void {
    // New certificate files: the heartbeats' connection is made again with them at once, the
    // tunnel once no run uses it (closing it would end them).
    this.stopWatching = this.opts.material.onChange(() => {
      this.opts.log.info("certificate files changed; reconnecting with the new certificate");
      this.node = this.nodeClient();
      this.rotateTunnel = true;
      this.rotateWhenIdle();
    });
    this.loops = [this.leaseLoop(), this.tunnelLoop()];
    this.fenceTimer = setInterval(() => this.checkLease(), 100);
    this.fenced = true;
    this.opts.host.fence("it has not joined the fleet yet").catch(this.failed);
  }

  /** Leaves: stops heartbeats and the tunnel (the lease then lapses on its own). */
  async close(): Promise<void> {
    this.stopWatching();
    this.stop.abort();
    clearInterval(this.fenceTimer);
    this.wakeTunnel();
    await Promise.allSettled(this.loops);
  }

  /** Keeps the outcome of a run whose stream was gone, to report it (ReportOutcome). */
  keepOutcome(taskId: string, attempt: number, outcome: RunOutcome): void {
    this.reports.push({ taskId, attempt, outcome });
    if (this.reports.length > MAX_PENDING_REPORTS) this.reports.shift();
  }

  /** Logs a run-ending call that failed (the runs end with their sandboxes regardless). */
  private readonly failed = (e: unknown) =>
    this.opts.log.error("could not end a run here", { error: e });

  private get signal(): AbortSignal {
    return this.stop.signal;
  }

  private async leaseLoop(): Promise<void> {
    let wait = RETRY_FIRST_MS;
    while (!this.signal.aborted) {
      const sent = Date.now();
      try {
        if (!this.registered) await this.register();
        else await this.heartbeat();
        this.renewedAt = sent;
        // A renewal counts from when it was sent: one whose call was slow (it waited on a link
        // coming back) leaves little of the fence window.
        const window = this.leaseTtlMs * FENCE_AT;
        const left = window > 0 ? window - (Date.now() - sent) : this.intervalMs * 2;
        if (this.fenced) {
          // Taking work with less than half the window left, this node could fence itself
          // again before its next renewal, ending the run it was just given. Renew again first.
          if (left < window / 2) continue;
          this.fenced = false;
          await this.opts.host.fence(undefined);
          this.opts.log.info("holding the lease again; taking work", { node: this.name });
        }
        await this.sendReports();
        this.rotateWhenIdle();
        wait = RETRY_FIRST_MS;
        // The next renewal well before the window closes, however long this one took.
        await this.pause(Math.max(50, Math.min(this.intervalMs, left / 2)));
      } catch (e) {
        const err = ConnectError.from(e);
        if (this.signal.aborted) return;
        if (err.code === Code.FailedPrecondition) this.registered = false;
        if (err.code === Code.AlreadyExists)
          this.opts.log.warn(
            "another AgentHost run holds this node's lease (an earlier run of this one, or a twin with its certificate); trying again until it lapses",
            { error: err.rawMessage },
          );
        else if ([Code.PermissionDenied, Code.Unauthenticated].includes(err.code))
          this.opts.log.error("the orchestrator refused this node", { error: err.rawMessage });
        else this.opts.log.debug("could not renew the lease", { error: err.rawMessage });
        await this.pause(wait);
        wait = Math.min(wait * 2, RETRY_MAX_MS);
      }
    }
  }

  private async register(): Promise<void> {
    const res = await this.node.registerNode(
      { ...this.opts.info, name: this.name, instanceId: this.opts.host.instanceId },
      { timeoutMs: RETRY_MAX_MS, signal: this.signal },
    );
    this.leaseTtlMs = Number(res.leaseTtlMs);
    this.intervalMs = Math.max(50, Number(res.heartbeatIntervalMs));
    this.opts.host.lifelineIdleMs = Math.max(100, Math.round(this.leaseTtlMs * RUN_IDLE_AT));
    this.registered = true;
    // A tunnel from before (the Orchestrator restarted, or took this node as lost) is stale.
    this.tunnelSocket?.destroy();
    this.opts.log.info("joined the fleet", {
      orchestrator: this.opts.address,
      node: this.name,
      lease_ms: this.leaseTtlMs,
    });
    this.wakeTunnel();
  }

  private async heartbeat(): Promise<void> {
    const runs = this.opts.host.runs();
    const res = await this.node.heartbeat(
      { name: this.name, runs, instanceId: this.opts.host.instanceId },
      { timeoutMs: Math.max(this.intervalMs, 1000), signal: this.signal },
    );
    this.leaseTtlMs = Number(res.leaseTtlMs);
    for (const r of res.endRuns) {
      this.opts.log.warn("ending a run that is no longer its task's current attempt", {
        task_id: r.taskId,
        attempt: r.attempt,
      });
      this.opts.host.cancel(r.taskId).catch(this.failed);
    }
  }

  private async sendReports(): Promise<void> {
    while (this.reports.length > 0 && !this.signal.aborted) {
      const r = this.reports[0]!;
      try {
        await this.node.reportOutcome(
          { name: this.name, run: { taskId: r.taskId, attempt: r.attempt }, outcome: r.outcome },
          { timeoutMs: RETRY_MAX_MS, signal: this.signal },
        );
      } catch (e) {
        const err = ConnectError.from(e);
        if (err.code === Code.Unavailable || err.code === Code.DeadlineExceeded) return;
        this.opts.log.info("the orchestrator did not take a run's outcome", {
          task_id: r.taskId,
          attempt: r.attempt,
          error: err.rawMessage,
        });
      }
      this.reports.shift();
    }
  }

  /** Opens the tunnel again with the new certificate, once no run uses the old one. */
  private rotateWhenIdle(): void {
    if (!this.rotateTunnel || this.opts.host.runs().length > 0) return;
    this.rotateTunnel = false;
    this.tunnelSocket?.destroy();
  }

  /**
   * Self-fencing: half the lease without a renewal ends every run here. Until then the runs'
   * lifelines are ticked (a run whose ticks stop ends by itself: this process may be frozen).
   */
  private checkLease(): void {
    if (this.fenced || !this.registered || this.leaseTtlMs === 0) return;
    if (Date.now() - this.renewedAt < this.leaseTtlMs * FENCE_AT) {
      this.opts.host.tickLifelines();
      return;
    }
    this.fenced = true;
    this.registered = false;
    const why = `its lease could not be renewed for ${Math.round(this.leaseTtlMs * FENCE_AT)} ms`;
    this.opts.log.warn("lost touch with the orchestrator; ending every run here", {
      node: this.name,
    });
    this.opts.host.fence(why).catch(this.failed);
  }

  /** Keeps one tunnel open while registered; the Orchestrator calls this AgentHost over it. */
  private async tunnelLoop(): Promise<void> {
    let wait = RETRY_FIRST_MS;
    while (!this.signal.aborted) {
      if (!this.registered) {
        await new Promise<void>((resolve) => (this.wakeTunnel = resolve));
        continue;
      }
      const opened = Date.now();
      try {
        await this.tunnel();
      } catch (e) {
        this.opts.log.debug("tunnel to the orchestrator failed", { error: e });
      }
      if (Date.now() - opened > RETRY_MAX_MS) wait = RETRY_FIRST_MS;
      await this.pause(wait);
      wait = Math.min(wait * 2, RETRY_MAX_MS);
    }
  }

  private async tunnel(): Promise<void> {
    const socket = dialTls(this.opts.address, this.opts.material, "orchestrator", [TUNNEL_ALPN]);
    this.tunnelSocket = socket;
    const onAbort = () => socket.destroy();
    this.signal.addEventListener("abort", onAbort);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once("secureConnect", resolve);
        socket.once("error", reject);
      });
      if (socket.alpnProtocol !== TUNNEL_ALPN)
        throw new Error(`${this.opts.address} does not take node tunnels (no ${TUNNEL_ALPN})`);
      const identity = peerIdentity(socket);
      if (!identity) throw new Error("the orchestrator's certificate holds no identity");
      this.opts.log.info("tunnel to the orchestrator open", { orchestrator: this.opts.address });
      socket.on("error", () => undefined);
      await serveOnTunnel(
        socket,
        {
          services: [AgentHostService],
          routes: agentHostRoutes(this.opts.host, this),
          interceptors: this.opts.interceptors ?? [],
          log: this.opts.log,
        },
        { kind: "tls", identity },
      );
    } finally {
      this.signal.removeEventListener("abort", onAbort);
      socket.destroy();
    }
  }

  private async pause(ms: number): Promise<void> {
    try {
      await delay(ms, undefined, { signal: this.signal });
    } catch {
      // stopping
    }
  }
}
