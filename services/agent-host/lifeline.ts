import net from "node:net";
import { socketForAgent, type AgentOwner } from "../shared/agent-files.ts";

/** A listening lifeline; close() cuts it (the container then ends). */
export interface Lifeline {
  socketPath: string;
  close(): Promise<void>;
}

/** A container's main process holds one connection; a restart of it may briefly hold two. */
const MAX_CONNECTIONS = 4;

/**
 * The socket an agent container's main process stays connected to (the image's entrypoint,
 * CONDUCTOR_LIFELINE_SOCKET). It never sends anything; when this AgentHost dies — however:
 * kill -9 included — the kernel closes the connection, the main process exits and the engine
 * ends every process in the container. So no run outlives its AgentHost, as bubblewrap's
 * --die-with-parent gives the process runtime. Reachable by `owner` (the container's own
 * user, SANDBOX_INFRA_USER) alone.
 */
export async function startLifeline(
  socketPath: string,
  owner: AgentOwner | undefined,
): Promise<Lifeline> {
  const open = new Set<net.Socket>();
  const server = net.createServer((s) => {
    open.add(s);
    s.on("error", () => s.destroy());
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
  socketForAgent(socketPath, owner);
  return {
    socketPath,
    close: async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
