// A real Broker on a Unix socket in a temp folder, with clients per identity, for tests and
// benchmarks. restart() closes it and opens it again on the same folder and socket.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Client } from "@connectrpc/connect";
import type { Registry } from "prom-client";
import type { BrokerService } from "../../gen/conductor/v1/broker_pb.js";
import { startModelProxy } from "../agent-host/model-proxy.ts";
import { silentLogger } from "../shared/log.ts";
import { brokerClient, localBroker, setUpAgentBroker, type AgentBroker } from "./access.ts";
import type { BrokerOptions } from "./broker.ts";
import { agentCredential, loadBrokerSecret, orchestratorCredential } from "./credentials.ts";
import { mcpHandler } from "./mcp-http.ts";
import { startBrokerServer, type BrokerServer } from "./serve.ts";

/**
 * An agent as an AgentHost serves it: its model proxy on a Unix socket (forwarding to a fake
 * model) serving its Broker tools, and a loopback port forwarded to that socket, as in a sandbox.
 */
export interface AgentEndpoint extends AsyncDisposable {
  agent: AgentBroker;
  socketPath: string;
  /** `http://127.0.0.1:<port>`: the CLI's ANTHROPIC_BASE_URL; the tools are at `${url}/mcp`. */
  url: string;
  close(): Promise<void>;
}

/** A Broker started for one test; `await using` removes it and its folder. */
export interface TestBroker extends AsyncDisposable {
  dir: string;
  dataDir: string;
  socketPath: string;
  secret: Buffer;
  server: BrokerServer;
  /** A client calling as agent `id` (with its real credential). */
  agent(id: string): Client<typeof BrokerService>;
  /** A client calling as the Orchestrator. */
  orchestrator(): Client<typeof BrokerService>;
  /** Agent `id`'s way to the Broker (its credential, the CLI's MCP config), as an AgentHost makes it. */
  agentWay(id: string): Promise<AgentBroker>;
  /** Agent `id` served its tools as an AgentHost does, its model calls going to `modelUrl`. */
  agentEndpoint(id: string, modelUrl: string): Promise<AgentEndpoint>;
  /** Registers agents (as the Orchestrator) so they can be messaged. */
  register(...ids: string[]): Promise<void>;
  /**
   * Closes the Broker and starts it again on the same data and socket; `whileDown` runs
   * between the two (e.g. to fill the disk).
   */
  restart(whileDown?: () => void): Promise<void>;
  close(): Promise<void>;
}

/**
 * Serves `agent` as an AgentHost does: its model proxy on `socketPath` (forwarding to
 * `modelUrl`) with its Broker tools, and a loopback port forwarded to the socket.
 */
export async function serveAgent(
  agent: AgentBroker,
  modelUrl: string,
  socketPath: string,
): Promise<AgentEndpoint> {
  const proxy = await startModelProxy({
    socketPath,
    upstream: modelUrl,
    apiKey: "fake-key",
    log: silentLogger,
    mcp: mcpHandler(agent, silentLogger),
  });
  proxy.limit(undefined); // open, as during a run
  const forwarder = net.createServer((client) => {
    const upstream = net.connect(proxy.socketPath);
    const end = () => (client.destroy(), upstream.destroy());
    for (const s of [client, upstream]) s.on("error", end).on("close", end);
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => forwarder.listen(0, "127.0.0.1", resolve));
  const { port } = forwarder.address() as net.AddressInfo;
  const close = async () => {
    forwarder.close();
    await proxy.close();
  };
  return {
    agent,
    socketPath,
    url: `http://127.0.0.1:${port}`,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * Starts a Broker with small test defaults, overridable; `seed` may put files in the data
 * folder first (e.g. a broker.db from an older version).
 */
export async function startTestBroker(
  overrides: Partial<BrokerOptions> & {
    registry?: Registry;
    seed?: (dataDir: string) => void;
  } = {},
): Promise<TestBroker> {
  const inboxLimit = overrides.inboxLimit ?? 10_000;
  const dir = mkdtempSync(path.join(tmpdir(), "broker-test-"));
  // A data folder given (e.g. on a small tmpfs) belongs to the test; the default one to this.
  const dataDir = overrides.dataDir ?? path.join(dir, "data");
  const socketPath = path.join(dir, "run", "broker.sock");
  const { seed, ...rest } = overrides;
  const options: BrokerOptions & { socketPath: string; registry?: Registry } = {
    dataDir,
    socketPath,
    ackTimeoutMs: 30_000,
    inboxLimit,
    // As Config.broker has them by default: a tenth of the inbox each.
    senderShare: Math.max(1, Math.floor(inboxLimit / 10)),
    replyReserve: Math.floor(inboxLimit / 10),
    ttlMs: 3_600_000,
    maxPayloadBytes: 65_536,
    requestTimeoutMs: 10_000,
    log: silentLogger,
    ...rest,
  };
  let server: BrokerServer;
  try {
    if (seed) {
      mkdirSync(dataDir, { recursive: true });
      seed(dataDir);
    }
    server = await startBrokerServer(options);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const secret = loadBrokerSecret(dataDir);
  const clients = new Map<string, Client<typeof BrokerService>>();
  const clientFor = (id: string, credential: string) => {
    let c = clients.get(id);
    if (!c) {
      c = brokerClient({ socketPath, credential });
      clients.set(id, c);
    }
    return c;
  };
  const t: TestBroker = {
    dir,
    dataDir,
    socketPath,
    secret,
    get server() {
      return server;
    },
    agent: (id) => clientFor(id, agentCredential(secret, id)),
    orchestrator: () => clientFor("orchestrator", orchestratorCredential(secret)),
    agentWay: (agentId) => setUpAgentBroker({ agentId, access: localBroker(secret, socketPath) }),
    agentEndpoint: async (agentId, modelUrl) =>
      serveAgent(await t.agentWay(agentId), modelUrl, path.join(dir, `${agentId}.model.sock`)),
    async register(...ids) {
      for (const agentId of ids) await t.orchestrator().registerAgent({ agentId });
    },
    async restart(whileDown) {
      await server.close();
      clients.clear(); // as clients of a restarted server do, they connect anew
      whileDown?.();
      server = await startBrokerServer(options);
    },
    async close() {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
    [Symbol.asyncDispose]: () => t.close(),
  };
  return t;
}

/** One JSON-RPC message POSTed to an MCP endpoint: its HTTP status and the answer, if any. */
export async function postMcp(
  url: string,
  message: object,
): Promise<{ status: number; msg?: Rpc }> {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
    body: JSON.stringify(message),
  });
  const body = await res.text();
  // An answer comes as one SSE event (`data: {...}`); transport errors as plain JSON.
  const data = body.split("\n").find((l) => l.startsWith("data: ") && l.length > 6);
  const json = data ? data.slice(6) : body.trim().startsWith("{") ? body : undefined;
  return { status: res.status, ...(json ? { msg: JSON.parse(json) as Rpc } : {}) };
}
export interface Rpc {
  result?: Record<string, unknown>;
  error?: { code: number; message: string };
}

/** An MCP client of one endpoint, as JSON-RPC over plain POSTs. */
export function mcpClient(url: string) {
  let next = 0;
  const call = async (method: string, params?: unknown): Promise<Rpc> => {
    const { msg } = await postMcp(url, { jsonrpc: "2.0", id: `req-${next++}`, method, params });
    if (!msg) throw new Error(`${method}: no answer`);
    return msg;
  };
  return {
    call,
    /** A tool's result text and whether it is an error. */
    async tool(name: string, args: object): Promise<{ text: string; isError: boolean }> {
      const { result, error } = await call("tools/call", { name, arguments: args });
      if (!result) throw new Error(`${name}: ${error?.message}`);
      const r = result as { content: { text: string }[]; isError?: boolean };
      return { text: r.content[0]!.text, isError: r.isError === true };
    },
  };
}
