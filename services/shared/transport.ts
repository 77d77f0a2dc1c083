import { chmodSync, lstatSync, mkdirSync, rmSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import path from "node:path";
import type http from "node:http";
import {
  createContextValues,
  type ConnectRouter,
  type ContextValues,
  type Interceptor,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import { HealthRegistry, registerHealth } from "./health.ts";
import { authorize, PEER } from "./authz.ts";
import type { Logger } from "./log.ts";
import { registerReflection } from "./reflection.ts";
import { errorEdge } from "./rpc-interceptors.ts";

export { unixTransport } from "./unix-client.ts";

/** A request handler of node:http or node:http2 (connect-node's, which it does not export). */
export type NodeHandlerFn = ReturnType<typeof connectNodeAdapter>;
/** A handler's request and response, and a guard's verdict on them ("" to serve). */
export type NodeGuard = (...args: Parameters<NodeHandlerFn>) => string;

/** The largest request a server reads; a bigger one is refused with RESOURCE_EXHAUSTED. */
export const READ_MAX_BYTES = 4 * 1024 * 1024;

/** A running gRPC server on a Unix socket; close() ends open streams too. */
export interface UnixServer extends AsyncDisposable {
  socketPath: string;
  health: HealthRegistry;
  close(): Promise<void>;
}

/** What a server serves: its services (for reflection and health) and how to route them. */
export interface ServeOptions {
  socketPath: string;
  services: DescService[];
  routes: (router: ConnectRouter) => void;
  interceptors?: Interceptor[];
  /** Where the error edge logs an INTERNAL failure's cause. */
  log?: Logger;
  /** Also answer the Connect protocol (unary JSON POSTs), e.g. for dependency-free clients. */
  connect?: boolean;
  /** Also answer gRPC-Web (browsers). */
  grpcWeb?: boolean;
  /** Answers every request that is no RPC (default: 404), e.g. the console's static files. */
  fallback?: NodeHandlerFn;
  /**
   * Sees every request first (it may set response headers): returns why it is refused (403
   * with that text), or "" to serve it.
   */
  guard?: NodeGuard;
}

/**
 * Serves gRPC (and Connect) on a Unix socket, mode 0600, in a folder of mode 0700,
 * with grpc.health.v1 and server reflection beside the given services.
 */
export async function serveUnix(opts: ServeOptions): Promise<UnixServer> {
  const health = new HealthRegistry();
  const handler = rpcHandler(opts, health, () => createContextValues().set(PEER, { kind: "unix" }));
  const server = http2.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  mkdirSync(path.dirname(opts.socketPath), { recursive: true, mode: 0o700 });
  await removeStaleSocket(opts.socketPath);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });
  chmodSync(opts.socketPath, 0o600);
  for (const s of opts.services) health.set(s.typeName, "SERVING");
  health.set("", "SERVING");
  const close = async () => {
    health.set("", "NOT_SERVING");
    for (const s of sessions) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { socketPath: opts.socketPath, health, close, [Symbol.asyncDispose]: close };
}

/**
 * The request handler of a server: the services with health and reflection beside them, the
 * given interceptors, the authorisation interceptor and the error edge. `peer` tells every call
 * who is calling (authz.ts).
 */
export function rpcHandler(
  opts: Omit<ServeOptions, "socketPath">,
  health: HealthRegistry,
  peer: (req: http2.Http2ServerRequest | http.IncomingMessage) => ContextValues,
): NodeHandlerFn {
  const handler = connectNodeAdapter({
    readMaxBytes: READ_MAX_BYTES,
    // A misspelt field or enum name in JSON is an INVALID_ARGUMENT naming it, not ignored.
    jsonOptions: { ignoreUnknownFields: false },
    connect: opts.connect ?? false,
    grpcWeb: opts.grpcWeb ?? false,
    contextValues: peer,
    ...(opts.fallback ? { fallback: opts.fallback } : {}),
    interceptors: [...(opts.interceptors ?? []), authorize(), errorEdge(opts.log)],
    routes: (router) => {
      opts.routes(router);
      registerHealth(router, health);
      registerReflection(router, opts.services);
    },
  });
  const guard = opts.guard;
  if (!guard) return handler;
  return (req, res) => {
    const why = guard(req, res);
    if (!why) return handler(req, res);
    res.writeHead(403, { "content-type": "text/plain; charset=utf-8" });
    res.end(why + "\n");
  };
}

/** A socket file left by a process that died is removed; a live one is an error. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  try {
    if (!lstatSync(socketPath).isSocket()) {
      throw new Error(`${socketPath} exists and is not a socket; remove it or choose another path`);
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(socketPath);
    c.once("connect", () => (c.destroy(), resolve(true)));
    c.once("error", () => resolve(false));
  });
  if (alive) throw new Error(`another server is already listening on ${socketPath}`);
  rmSync(socketPath, { force: true });
}
