import net from "node:net";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

// Apart from transport.ts (servers: health, reflection, authorization, tracing), so that a
// client such as the CLI loads only connect to call a service.

/** A gRPC client transport over a Unix socket. */
export function unixTransport(socketPath: string, interceptors: Interceptor[] = []): Transport {
  return createGrpcTransport({
    baseUrl: "http://localhost",
    interceptors,
    nodeOptions: { createConnection: () => net.connect(socketPath) },
  });
}
