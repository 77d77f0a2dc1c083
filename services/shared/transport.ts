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
import { ServerCredentials } from "@grpc/grpc-js";
import type { DescService } from "@bufbuild/protobuf";
import { HealthRegistry, registerHealth } from "./health.ts";
import { authorize, PEER } from "./authz.ts";
import type { Logger } from "./log.ts";
import { registerReflection } from "./reflection.ts";
import { errorEdge } from "./rpc-interceptors.ts";
import { cappedGrpcTimeout, grpcServer, MAX_DEADLINE_MS } from "./grpc-server.ts";

export { unixTransport } from "./unix-client.ts";

/** A request handler of node:http or node:http2 (connect-node's, which it does not export). */
export type NodeHandlerFn = ReturnType<typeof connectNodeAdapter>;
/** An answer a guard gives instead of the handler's: its HTTP status, content type and body. */
export interface Refusal {
  status: number;
  contentType: string;
  body: string;
}
/**
 * A handler's request and response, and a guard's verdict on them: "" to serve, a reason to
 * refuse with 403 (plain text), or a Refusal.
 */
export type NodeGuard = (...args: Parameters<NodeHandlerFn>) => string | Refusal;

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
 * Serves gRPC on a Unix socket, mode 0600, in a folder of mode 0700, with grpc.health.v1 and
 * server reflection beside the given services: on @grpc/grpc-js, or on connect-node's adapter
 * when the options ask for the Connect protocol, gRPC-Web, a fallback or a guard.
 */
export async function serveUnix(opts: ServeOptions): Promise<UnixServer> {
  const health = new HealthRegistry();
  mkdirSync(path.dirname(opts.socketPath), { recursive: true, mode: 0o700 });
  await removeStaleSocket(opts.socketPath);
  const close =
    opts.connect || opts.grpcWeb || opts.fallback || opts.guard
      ? await listenConnect(opts, health)
      : await listenGrpc(opts, health);
  chmodSync(opts.socketPath, 0o600);
  for (const s of opts.services) health.set(s.typeName, "SERVING");
  health.set("", "SERVING");
  const closeAll = async () => {
    health.set("", "NOT_SERVING");
    await close();
  };
  return { socketPath: opts.socketPath, health, close: closeAll, [Symbol.asyncDispose]: closeAll };
}

/** gRPC alone, on @grpc/grpc-js (grpc-server.ts); returns how to close it, ending every call. */
async function listenGrpc(
  opts: ServeOptions,
  health: HealthRegistry,
): Promise<() => Promise<void>> {
  const server = grpcServer(routesWith(opts, health), {
    readMaxBytes: READ_MAX_BYTES,
    interceptors: interceptorsOf(opts),
    contextValues: () => createContextValues().set(PEER, { kind: "unix" }),
  });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(
      `unix:${path.resolve(opts.socketPath)}`,
      ServerCredentials.createInsecure(),
      (e) => (e ? reject(e) : resolve()),
    ),
  );
  return async () => {
    server.forceShutdown();
  };
}

/** gRPC, Connect and gRPC-Web on connect-node's adapter; returns how to close it. */
async function listenConnect(
  opts: ServeOptions,
  health: HealthRegistry,
): Promise<() => Promise<void>> {
  const handler = rpcHandler(opts, health, () => createContextValues().set(PEER, { kind: "unix" }));
  const server = http2.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return async () => {
    for (const s of sessions) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
}

/** The services' routes with health and reflection beside them. */
function routesWith(opts: Omit<ServeOptions, "socketPath">, health: HealthRegistry) {
  return (router: ConnectRouter) => {
    opts.routes(router);
    registerHealth(router, health);
    registerReflection(router, opts.services);
  };
}

/** The given interceptors, then authorisation, then the error edge (innermost). */
function interceptorsOf(opts: Omit<ServeOptions, "socketPath">): Interceptor[] {
  return [...(opts.interceptors ?? []), authorize(), errorEdge(opts.log)];
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
    interceptors: interceptorsOf(opts),
    routes: routesWith(opts, health),
  });
  return (req, res) => {
    capDeadline(req.headers);
    const why = opts.guard?.(req, res);
    if (!why) return handler(req, res);
    const r =
      typeof why === "string"
        ? { status: 403, contentType: "text/plain; charset=utf-8", body: `${why}\n` }
        : why;
    // A refused request's body is not read: over HTTP/1.1 the connection closes after the
    // answer, so a client dribbling a body in cannot hold it (over HTTP/2 the stream ends).
    const close = req.httpVersionMajor === 1 ? { connection: "close" } : {};
    res.writeHead(r.status, { "content-type": r.contentType, ...close });
    res.end(r.body);
  };
}

/**
 * Caps a request's deadline (`grpc-timeout`, gRPC and gRPC-Web; `connect-timeout-ms`,
 * Connect) at MAX_DEADLINE_MS. connect-node arms a timer with it, and Node fires a longer
 * timer at once (TimeoutOverflowWarning): a call with a 30-day deadline ended
 * DEADLINE_EXCEEDED as it began.
 */
function capDeadline(headers: http.IncomingHttpHeaders): void {
  const grpcTimeout = headers["grpc-timeout"];
  if (typeof grpcTimeout === "string") headers["grpc-timeout"] = cappedGrpcTimeout(grpcTimeout);
  const connectTimeout = String(headers["connect-timeout-ms"] ?? "");
  if (/^\d{1,10}$/.test(connectTimeout) && Number(connectTimeout) > MAX_DEADLINE_MS)
    headers["connect-timeout-ms"] = String(MAX_DEADLINE_MS);
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
