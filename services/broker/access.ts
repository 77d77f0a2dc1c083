// What an AgentHost (or any other process) needs to give agents the Broker: credentials,
// the relay socket, the MCP server and its `--mcp-config`, and a client.
import { readFileSync, renameSync, rmSync } from "node:fs";
import path from "node:path";
import net from "node:net";
import type { Duplex } from "node:stream";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { BrokerNodeService, BrokerService } from "../../gen/conductor/v1/broker_pb.js";
import { dialTls, tlsTransport } from "../shared/tcp.ts";
import type { TlsMaterial } from "../shared/tls.ts";
import { writeForAgent, type AgentOwner } from "../shared/agent-files.ts";
import type { Logger } from "../shared/log.ts";
import { unixTransport } from "../shared/transport.ts";
import { credentialInterceptor } from "./auth.ts";
import { agentCredential, orchestratorCredential } from "./credentials.ts";
import { startBrokerRelay, type BrokerRelay } from "./relay.ts";

export { agentCredential, loadBrokerSecret, orchestratorCredential } from "./credentials.ts";
export { startBrokerRelay, type BrokerRelay } from "./relay.ts";

/** The MCP server: one dependency-free JavaScript file, runnable by a bare `node`. */
export const MCP_SERVER_SCRIPT = path.join(import.meta.dirname, "mcp-server.js");

/** The MCP server's name in `--mcp-config`; its tools are `mcp__conductor__<tool>`. */
export const MCP_SERVER_NAME = "conductor";

/** The permission rule that lets the CLI call every Broker tool (add it to --allowedTools). */
export const MCP_ALLOWED_TOOLS = `mcp__${MCP_SERVER_NAME}`;

/** File names in an agent's `run` folder. */
export const RUN_FILES = {
  relay: "broker.sock",
  credential: "broker.credential",
  script: "conductor-mcp.js",
} as const;

/**
 * The JSON for `claude --mcp-config`: one stdio MCP server named "conductor", started as
 * `<nodePath> <serverScript> --socket <brokerSocket> --credential-file <file> --agent-id <id>`.
 */
export function mcpConfig(opts: {
  nodePath: string;
  serverScript: string;
  brokerSocket: string;
  credentialFile: string;
  agentId: string;
}): string {
  return JSON.stringify({
    mcpServers: {
      [MCP_SERVER_NAME]: {
        type: "stdio",
        command: opts.nodePath,
        args: [
          opts.serverScript,
          "--socket",
          opts.brokerSocket,
          "--credential-file",
          opts.credentialFile,
          "--agent-id",
          opts.agentId,
        ],
        env: {},
      },
    },
  });
}

/** A BrokerService client over a Unix socket, every call carrying the credential. */
export function brokerClient(opts: {
  socketPath: string;
  credential: string;
  interceptors?: Interceptor[];
}): Client<typeof BrokerService> {
  return createClient(
    BrokerService,
    unixTransport(opts.socketPath, [
      ...(opts.interceptors ?? []),
      credentialInterceptor(opts.credential),
    ]),
  );
}

/**
 * How an AgentHost reaches the Broker for its agents: on this machine (its Unix socket, and the
 * key in the shared data folder), or across the network (a joined node: mutual TLS, and
 * credentials the Broker issues to the node for its own agents).
 */
export interface BrokerAccess {
  /** Where the Broker is, for notices. */
  where: string;
  /** A new connection to the Broker: the relay pipes an agent's connection into it. */
  connect(): Duplex;
  /** An agent's credential. */
  credential(agentId: string, timeoutMs?: number): Promise<string>;
  /** Makes an agent known to the Broker; throws when the Broker does not answer or take us. */
  register(agentId: string, timeoutMs?: number): Promise<void>;
}

/** The Broker on this machine: its socket, and the key in the shared data folder. */
export function localBroker(secret: Buffer, socketPath: string): BrokerAccess {
  const client = brokerClient({ socketPath, credential: orchestratorCredential(secret) });
  return {
    where: socketPath,
    connect: () => net.connect(socketPath),
    credential: (agentId) => Promise.resolve(agentCredential(secret, agentId)),
    register: async (agentId, timeoutMs = 5000) => {
      await client.registerAgent({ agentId, topics: [] }, { timeoutMs });
    },
  };
}

/**
 * A Broker on another machine (broker.listen there), reached over mutual TLS with this node's
 * certificate; the Broker issues this node's agents' credentials (BrokerNodeService), which
 * also registers them.
 */
export function remoteBroker(address: string, material: TlsMaterial): BrokerAccess {
  const client = createClient(BrokerNodeService, tlsTransport(address, material, "broker"));
  const issue = async (agentId: string, timeoutMs = 5000) =>
    (await client.issueAgentCredential({ agentId }, { timeoutMs })).credential;
  return {
    where: address,
    connect: () => dialTls(address, material, "broker"),
    credential: issue,
    register: async (agentId, timeoutMs) => void (await issue(agentId, timeoutMs)),
  };
}

/** What an agent's `run` folder holds once the Broker is set up for it. */
export interface AgentBroker {
  relay: BrokerRelay;
  credentialFile: string;
  /** The MCP server, copied beside the relay (the folder is mounted at the same path). */
  serverScript: string;
  /** `--mcp-config <json> --strict-mcp-config`, for the CLI's argv. */
  cliArgs: string[];
  /** Whether registerAgent succeeded (if not, the agent becomes known on its first call). */
  registered: boolean;
  /** Whether its credential file holds its credential (a remote Broker may not have answered). */
  hasCredential: boolean;
  /** Puts the agent's credential in its credential file (one got late from a remote Broker). */
  writeCredential(credential: string): void;
  close(): Promise<void>;
}

/**
 * Everything an agent needs to reach the Broker, in its `run` folder (made by freshRunDir):
 * the relay socket (the agent's user alone may connect), its credential and the MCP server
 * script (readable by the agent's group, `owner`, and not writable by it); then registers
 * the agent (best effort). `nodePath` is the node binary
 * as seen where the CLI runs: process.execPath for the process backend, "node" in an image.
 */
export async function setUpAgentBroker(opts: {
  runDir: string;
  agentId: string;
  access: BrokerAccess;
  nodePath: string;
  owner?: AgentOwner | undefined;
  log?: Logger;
}): Promise<AgentBroker> {
  const credentialFile = path.join(opts.runDir, RUN_FILES.credential);
  let credential = "";
  let registered = true;
  try {
    credential = await opts.access.credential(opts.agentId);
  } catch (e) {
    // A remote Broker not answering yet: the agent gets its credential at its first run's check.
    registered = false;
    opts.log?.warn("could not get the agent's Broker credential yet", {
      agent_id: opts.agentId,
      error: e,
    });
  }
  writeForAgent(credentialFile, credential + "\n", opts.owner);
  const serverScript = path.join(opts.runDir, RUN_FILES.script);
  writeForAgent(serverScript, readFileSync(MCP_SERVER_SCRIPT), opts.owner, 0o644);
  const relay = await startBrokerRelay({
    socketPath: path.join(opts.runDir, RUN_FILES.relay),
    connect: () => opts.access.connect(),
    owner: opts.owner,
  });
  if (registered) {
    try {
      await opts.access.register(opts.agentId);
    } catch (e) {
      registered = false;
      opts.log?.warn("could not register the agent with the Broker; it registers on first use", {
        agent_id: opts.agentId,
        error: e,
      });
    }
  }
  const json = mcpConfig({
    nodePath: opts.nodePath,
    serverScript,
    brokerSocket: relay.socketPath,
    credentialFile,
    agentId: opts.agentId,
  });
  const broker: AgentBroker = {
    relay,
    credentialFile,
    serverScript,
    cliArgs: ["--mcp-config", json, "--strict-mcp-config"],
    registered,
    hasCredential: credential !== "",
    writeCredential(c) {
      // A new file put in place: the old one is replaced, never written through.
      const next = `${credentialFile}.next`;
      rmSync(next, { force: true });
      writeForAgent(next, c + "\n", opts.owner);
      renameSync(next, credentialFile);
      broker.hasCredential = true;
    },
    close: () => relay.close(),
  };
  return broker;
}
