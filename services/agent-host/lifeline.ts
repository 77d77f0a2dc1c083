import net from "node:net";
import { SANDBOX_INFRA_USER } from "../../plugins/runtime.ts";
import { socketForAgent, type AgentOwner } from "../shared/agent-files.ts";

/** A listening lifeline for one agent's runs. */
export interface Lifeline {
  socketPath: string;
  /** Lets the next run hold on (until now, a connection was closed as soon as it came). */
  arm(): void;
  /** Closes every connection — the run holding one ends — and refuses new ones until arm(). */
  cut(): void;
  /**
   * Sends one byte to every connection: runs started with CONDUCTOR_RUN_LIFELINE_IDLE_MS end
   * when that long passes without one (a frozen AgentHost ticks no more).
   */
  tick(): void;
  close(): Promise<void>;
}

/**
 * A run's holder is one connection; the rest is room for what the agent itself opens (it is the
 * same user) so that it cannot starve the next run's holder while the last run's close is seen.
 */
const MAX_CONNECTIONS = 16;
const TICK = Buffer.from("\n");

/**
 * The socket each run in an agent's container holds a connection to (CONDUCTOR_RUN_LIFELINE;
 * the exec wrapper in plugins/runtime-docker/exec.ts). It never sends anything; when the
 * connection closes — this AgentHost died, however (kill -9 included), or cut() it — the
 * wrapper ends every process of the agent's user in the container. So no run outlives its
 * AgentHost, as bubblewrap's --die-with-parent gives the process runtime, and the AgentHost
 * can end a run without its container engine (an engine that went away). The container
 * itself stays, idle, for a restarted AgentHost to re-adopt; its main process (the container's
 * own user, SANDBOX_INFRA_USER) watches this socket and ends the container when no AgentHost has
 * listened on it for a while. Reachable by `owner` (the agent's user) and that user's group.
 *
 * A connection only closes when this process dies or lets go; one that is frozen (SIGSTOP, a
 * stalled VM) holds it. So a joined node's runs also get CONDUCTOR_RUN_LIFELINE_IDLE_MS and the
 * AgentHost tick()s while it holds its lease: the holder ends the run once the ticks stop for
 * that long, before the Orchestrator's lease runs out (services/agent-host/join.ts).
 */
export async function startLifeline(
  socketPath: string,
  owner: AgentOwner | undefined,
): Promise<Lifeline> {
  const open = new Set<net.Socket>();
  let armed = false;
  const server = net.createServer((s) => {
    s.on("error", () => s.destroy());
    if (!armed) {
      s.destroy();
      return;
    }
    open.add(s);
    s.on("close", () => open.delete(s));
    s.resume(); // nothing is expected; drop whatever comes
  });
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });
  // The agent's user holds it for its runs; the container's own user (its group) watches it.
  const infraGid = Number(SANDBOX_INFRA_USER.split(":")[1]);
  socketForAgent(socketPath, owner && { uid: owner.uid, gid: infraGid }, 0o660);
  const cut = () => {
    armed = false;
    for (const s of open) s.destroy();
  };
  return {
    socketPath,
    arm: () => void (armed = true),
    cut,
    tick: () => {
      for (const s of open) if (s.writableLength === 0) s.write(TICK);
    },
    close: async () => {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
