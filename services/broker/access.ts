// What an AgentHost (or any other process) needs to give agents the Broker: credentials,
// the relay socket, the MCP server and its `--mcp-config`, and a client.
import { readFileSync } from "node:fs";
import path from "node:path";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { BrokerService } from "../../gen/conductor/v1/broker_pb.js";
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
 * Makes an agent known to the Broker before it first calls (so others can message it at
 * once), as the Orchestrator's identity. Throws when the Broker can't be reached in time.
 */
export async function registerAgent(opts: {
  brokerSocket: string;
  secret: Buffer;
  agentId: string;
  topics?: string[];
  timeoutMs?: number;
}): Promise<void> {
  const client = brokerClient({
    socketPath: opts.brokerSocket,
    credential: orchestratorCredential(opts.secret),
  });
  await client.registerAgent(
    { agentId: opts.agentId, topics: opts.topics ?? [] },
    { timeoutMs: opts.timeoutMs ?? 5000 },
  );
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
  secret: Buffer;
  brokerSocket: string;
  nodePath: string;
  owner?: AgentOwner | undefined;
  log?: Logger;
}): Promise<AgentBroker> {
  const credentialFile = path.join(opts.runDir, RUN_FILES.credential);
  writeForAgent(credentialFile, agentCredential(opts.secret, opts.agentId) + "\n", opts.owner);
  const serverScript = path.join(opts.runDir, RUN_FILES.script);
  writeForAgent(serverScript, readFileSync(MCP_SERVER_SCRIPT), opts.owner, 0o644);
  const relay = await startBrokerRelay({
    socketPath: path.join(opts.runDir, RUN_FILES.relay),
    brokerSocket: opts.brokerSocket,
    owner: opts.owner,
  });
  let registered = true;
  try {
    await registerAgent({
      brokerSocket: opts.brokerSocket,
      secret: opts.secret,
      agentId: opts.agentId,
    });
  } catch (e) {
    registered = false;
    opts.log?.warn("could not register the agent with the Broker; it registers on first use", {
      agent_id: opts.agentId,
      error: e,
    });
  }
  const json = mcpConfig({
    nodePath: opts.nodePath,
    serverScript,
    brokerSocket: relay.socketPath,
    credentialFile,
    agentId: opts.agentId,
  });
  return {
    relay,
    credentialFile,
    serverScript,
    cliArgs: ["--mcp-config", json, "--strict-mcp-config"],
    registered,
    close: () => relay.close(),
  };
}
