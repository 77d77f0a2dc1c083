// What an AgentHost (or any other process) needs to give agents the Broker: credentials,
// the MCP tools' `--mcp-config`, and a client.
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { BrokerNodeService, BrokerService } from "../../gen/conductor/v1/broker_pb.js";
import { tlsTransport } from "../shared/tcp.ts";
import type { TlsMaterial } from "../shared/tls.ts";
import type { Logger } from "../shared/log.ts";
import { unixTransport } from "../shared/transport.ts";
import { credentialInterceptor } from "./auth.ts";
import { agentCredential, orchestratorCredential } from "./credentials.ts";
import { MCP_PATH } from "./mcp-http.ts";
import type { AgentCalls } from "./mcp-tools.ts";

export { agentCredential, loadBrokerSecret, orchestratorCredential } from "./credentials.ts";

/** The MCP server's name in `--mcp-config`; its tools are `mcp__conductor__<tool>`. */
export const MCP_SERVER_NAME = "conductor";

/** The permission rule that lets the CLI call every Broker tool (add it to --allowedTools). */
export const MCP_ALLOWED_TOOLS = `mcp__${MCP_SERVER_NAME}`;

/**
 * Where the CLI finds the tools: below its model API's base URL, which is the agent's model
 * proxy in every runtime (a loopback port forwarded to the agent's socket; the CLI expands
 * the variable, as the port differs between runtimes).
 */
export const MCP_URL = `\${ANTHROPIC_BASE_URL}${MCP_PATH}`;

/** The variable that holds a run's key (its ANTHROPIC_API_KEY too) in its CLI's environment. */
export const RUN_KEY_VARIABLE = "CONDUCTOR_RUN_KEY";

/**
 * The header each MCP request carries: the run's key, which the agent's proxy takes from the
 * current run only (ModelProxy.limit), expanded by the CLI from its environment as the URL is
 * (it expands ANTHROPIC_API_KEY to "" there, hence a variable of our own).
 */
export const MCP_HEADERS = { "x-api-key": `\${${RUN_KEY_VARIABLE}}` };

/** The JSON for `claude --mcp-config`: one Streamable HTTP MCP server named "conductor" at `url`. */
export function mcpConfig(url: string = MCP_URL): string {
  return JSON.stringify({
    mcpServers: { [MCP_SERVER_NAME]: { type: "http", url, headers: MCP_HEADERS } },
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
  /** A client for agents' calls (one connection, made again after it breaks); no credential of its own. */
  client: Client<typeof BrokerService>;
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
    client: createClient(BrokerService, unixTransport(socketPath)),
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
    client: createClient(BrokerService, tlsTransport(address, material, "broker")),
    credential: issue,
    register: async (agentId, timeoutMs) => void (await issue(agentId, timeoutMs)),
  };
}

/**
 * One agent's way to the Broker, held by its AgentHost (nothing of it is in the sandbox): the
 * agent's credential, and the `--mcp-config` that points its CLI at the tools the AgentHost
 * serves on the agent's model-proxy socket (mcp-http.ts), calling the Broker as this agent.
 */
export interface AgentBroker extends AgentCalls {
  /** The agent's credential; "" until a remote Broker that did not answer issues it. */
  credential: string;
  /** `--mcp-config <json> --strict-mcp-config`, for the CLI's argv. */
  cliArgs: string[];
  /** Whether registerAgent succeeded (if not, the agent becomes known on its first call). */
  registered: boolean;
}

/**
 * Gets agent `agentId`'s credential and registers it (best effort: a Broker not answering yet
 * is tried again at each run's start, see brokerTools). `mcpUrl` is where the CLI finds the
 * tools (default {@link MCP_URL}).
 */
export async function setUpAgentBroker(opts: {
  agentId: string;
  access: BrokerAccess;
  mcpUrl?: string;
  log?: Logger;
}): Promise<AgentBroker> {
  const { agentId, access } = opts;
  let credential = "";
  let registered = true;
  try {
    credential = await access.credential(agentId);
  } catch (e) {
    // A remote Broker not answering yet: the agent gets its credential at its first run's check.
    registered = false;
    opts.log?.warn("could not get the agent's Broker credential yet", {
      agent_id: agentId,
      error: e,
    });
  }
  if (registered) {
    try {
      await access.register(agentId);
    } catch (e) {
      registered = false;
      opts.log?.warn("could not register the agent with the Broker; it registers on first use", {
        agent_id: agentId,
        error: e,
      });
    }
  }
  const broker: AgentBroker = {
    agentId,
    where: access.where,
    client: access.client,
    credential,
    registered,
    cliArgs: ["--mcp-config", mcpConfig(opts.mcpUrl), "--strict-mcp-config"],
    options: (timeoutMs, signal) => ({
      timeoutMs,
      signal,
      headers: { authorization: `Bearer ${broker.credential}` },
    }),
  };
  return broker;
}
