import { rmSync } from "node:fs";
import net from "node:net";
import type { Duplex } from "node:stream";
import { socketForAgent, type AgentOwner } from "../shared/agent-files.ts";

/**
 * Connections one agent may hold open through its relay: its MCP server needs one or two.
 * Each costs this process three file descriptors, so an agent opening thousands cannot
 * exhaust them for every other service in the process.
 */
export const MAX_RELAY_CONNECTIONS = 32;

/** A running relay; close() ends its connections and removes nothing but its listener. */
export interface BrokerRelay extends AsyncDisposable {
  socketPath: string;
  close(): Promise<void>;
}

/**
 * Serves a Unix socket (mode 0600, owned by the agent's user `owner`) whose every
 * connection is piped, byte for byte, to the Broker's own socket. It lives in an agent's
 * `run` folder: the container sees only this socket, never the folder holding the other
 * services' sockets, and a Broker restart needs no remount (new connections reach the new
 * Broker). The relay adds no trust: every call still carries the agent's credential. At most
 * MAX_RELAY_CONNECTIONS at once: more are closed as they come (the kernel's backlog is not
 * read into descriptors).
 */
export async function startBrokerRelay(opts: {
  socketPath: string;
  /** A new connection to the Broker (its Unix socket, or TLS to a remote one). */
  connect: () => Duplex;
  owner?: AgentOwner | undefined;
}): Promise<BrokerRelay> {
  const open = new Set<Duplex>();
  const server = net.createServer((client) => {
    const upstream = opts.connect();
    open.add(client);
    open.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on("error", end);
      s.on("close", end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.maxConnections = MAX_RELAY_CONNECTIONS;
  // The run folder is the agent's own: a socket file left there by an earlier host is stale.
  rmSync(opts.socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });
  // Once listening, a failed accept is the one connection's loss, never the process's.
  server.on("error", () => {});
  const close = async () => {
    for (const s of open) s.destroy();
    open.clear();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  try {
    socketForAgent(opts.socketPath, opts.owner);
  } catch (e) {
    await close();
    throw e;
  }
  return { socketPath: opts.socketPath, close, [Symbol.asyncDispose]: close };
}
