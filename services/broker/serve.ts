import type { Interceptor } from "@connectrpc/connect";
import type { Registry } from "prom-client";
import { BrokerNodeService, BrokerService } from "../../gen/conductor/v1/broker_pb.js";
import type { Config } from "../shared/config.ts";
import type { Logger } from "../shared/log.ts";
import { serveTls, type TcpServer } from "../shared/tcp.ts";
import type { TlsMaterial } from "../shared/tls.ts";
import { serveUnix, type UnixServer } from "../shared/transport.ts";
import { authInterceptor } from "./auth.ts";
import { Broker, type BrokerOptions } from "./broker.ts";
import { loadBrokerSecret } from "./credentials.ts";
import { createBrokerMetrics } from "./metrics.ts";
import { brokerNodeRoutes, brokerRoutes } from "./routes.ts";

/** A Broker serving on its Unix socket; close() ends streams, then the database. */
export interface BrokerServer extends AsyncDisposable {
  broker: Broker;
  server: UnixServer;
  /** The TCP listener (broker.listen), for joined nodes' agents. */
  tcp?: TcpServer | undefined;
  socketPath: string;
  close(): Promise<void>;
}

/** The Broker's options from the `broker` section of the configuration (durations in ms). */
export function brokerOptions(config: Config, log: Logger): BrokerOptions {
  const b = config.broker;
  return {
    dataDir: config.storage.data_dir,
    ackTimeoutMs: b.ack_timeout_seconds * 1000,
    inboxLimit: b.inbox_limit,
    senderShare: b.sender_share,
    replyReserve: b.reply_reserve,
    ttlMs: b.ttl_seconds * 1000,
    maxPayloadBytes: b.max_payload_bytes,
    requestTimeoutMs: b.request_timeout_seconds * 1000,
    log,
  };
}

/**
 * Opens the Broker's store (`<dataDir>/broker.db`, creating `<dataDir>/broker.key` on first
 * start) and serves BrokerService on a Unix socket, over gRPC and the Connect protocol (so
 * the dependency-free MCP server can call it with plain JSON POSTs). Every BrokerService
 * call is authenticated by the credential interceptor, after the given interceptors.
 */
export async function startBrokerServer(
  opts: BrokerOptions & {
    socketPath: string;
    interceptors?: Interceptor[];
    /** Where the Broker's metrics go (conductor_broker_*); none when undefined. */
    registry?: Registry | undefined;
    /** Also serve on TCP with mutual TLS (broker.listen), for joined nodes' agents. */
    tls?: { listen: string; material: TlsMaterial } | undefined;
  },
): Promise<BrokerServer> {
  const secret = loadBrokerSecret(opts.dataDir);
  let broker: Broker | undefined = undefined;
  const observer = opts.registry
    ? createBrokerMetrics(opts.registry, () => broker?.waiting() ?? 0)
    : undefined;
  broker = new Broker({ ...opts, observer });
  let server: UnixServer;
  try {
    server = await serveUnix({
      socketPath: opts.socketPath,
      services: [BrokerService],
      routes: brokerRoutes(broker),
      interceptors: [...(opts.interceptors ?? []), authInterceptor(secret)],
      log: opts.log,
    });
  } catch (e) {
    broker.close();
    throw e;
  }
  let tcp: TcpServer | undefined;
  if (opts.tls) {
    try {
      tcp = await serveTls({
        listen: opts.tls.listen,
        material: opts.tls.material,
        services: [BrokerService, BrokerNodeService],
        routes: (router) => {
          brokerRoutes(broker)(router);
          brokerNodeRoutes(broker, secret)(router);
        },
        interceptors: [...(opts.interceptors ?? []), authInterceptor(secret)],
        log: opts.log,
      });
    } catch (e) {
      await server.close();
      broker.close();
      throw e;
    }
  }
  const close = async () => {
    await tcp?.close();
    await server.close();
    broker.close();
  };
  return {
    broker,
    server,
    ...(tcp ? { tcp } : {}),
    socketPath: opts.socketPath,
    close,
    [Symbol.asyncDispose]: close,
  };
}
