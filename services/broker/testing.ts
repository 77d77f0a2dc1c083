// A real Broker on a Unix socket in a temp folder, with clients per identity, for tests and
// benchmarks. restart() closes it and opens it again on the same folder and socket.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Client } from "@connectrpc/connect";
import type { Registry } from "prom-client";
import type { BrokerService } from "../../gen/conductor/v1/broker_pb.js";
import { silentLogger } from "../shared/log.ts";
import { brokerClient, localBroker, setUpAgentBroker, type AgentBroker } from "./access.ts";
import type { BrokerOptions } from "./broker.ts";
import { agentCredential, loadBrokerSecret, orchestratorCredential } from "./credentials.ts";
import { startBrokerServer, type BrokerServer } from "./serve.ts";

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
  /** Agent `id`'s way to the Broker (relay, credential, MCP script), as an AgentHost makes it. */
  agentWay(id: string): Promise<AgentBroker>;
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
    async agentWay(agentId) {
      const runDir = path.join(dir, "agents", agentId, "run");
      mkdirSync(runDir, { recursive: true });
      return setUpAgentBroker({
        runDir,
        agentId,
        access: localBroker(secret, socketPath),
        nodePath: process.execPath,
      });
    },
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
