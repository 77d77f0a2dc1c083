import { X509Certificate } from "node:crypto";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import tls from "node:tls";
import {
  Code,
  ConnectError,
  createContextValues,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { PEER, type Peer } from "./authz.ts";
import { HealthRegistry } from "./health.ts";
import { parseHostPort } from "./host-port.ts";
import type { Logger } from "./log.ts";
import { identityOf, keepServerCurrent, peerIdentity, type Role, type TlsMaterial } from "./tls.ts";
import { rpcHandler, type ServeOptions } from "./transport.ts";

/**
 * The ALPN protocol of a joined AgentHost's tunnel: the node dials out, and over that one TLS
 * connection the Orchestrator is the HTTP/2 (gRPC) client and the node the server, so a node
 * behind NAT needs no inbound port.
 */
export const TUNNEL_ALPN = "conductor-node/1";

/** Longest a TLS handshake may take before the connection is dropped. */
const HANDSHAKE_TIMEOUT_MS = 10_000;
/** Most TCP connections one listener holds at once; more are refused as they come. */
export const MAX_TCP_CONNECTIONS = 10_000;

/** A running TCP listener; close() ends its connections (tunnels are their owner's to end). */
export interface TcpServer extends AsyncDisposable {
  /** Where it listens (the port the kernel chose, for port 0). */
  host: string;
  port: number;
  health: HealthRegistry;
  close(): Promise<void>;
}

/** What a TCP listener serves, beyond a Unix server's options. */
export interface TlsServeOptions extends Omit<ServeOptions, "socketPath"> {
  /** communication.listen: host:port. */
  listen: string;
  /** This server's certificate, key and the cluster CA, reloaded when their files change. */
  material: TlsMaterial;
  /** Takes a node's tunnel connection (ALPN TUNNEL_ALPN); unset: tunnels are refused. */
  onTunnel?: (socket: tls.TLSSocket, peer: Extract<Peer, { kind: "tls" }>) => void;
  log: Logger;
}

/**
 * Serves gRPC, gRPC-Web and the Connect protocol (HTTP/2, and HTTP/1.1 for Connect unary and
 * gRPC-Web) on TCP with TLS 1.3 and required client certificates chained to the cluster CA;
 * health and reflection answer too. Every call carries the caller's identity (authz.ts); a
 * connection without a verified certificate holding a Conductor SPIFFE ID is refused at the
 * handshake. Certificate rotation: new connections use the material's latest files.
 */
export async function serveTls(opts: TlsServeOptions): Promise<TcpServer> {
  const { host, port } = parseHostPort(opts.listen);
  const health = new HealthRegistry();
  const peers = new WeakMap<object, Peer>();
  const handler = rpcHandler({ ...opts, connect: true, grpcWeb: true }, health, (req) => {
    const key = "stream" in req ? req.stream.session : req.socket;
    const peer = key ? peers.get(key) : undefined;
    // Every connection reaching here passed the handshake with an identity (below).
    return createContextValues().set(PEER, peer ?? { kind: "unix" });
  });
  const h2 = http2.createServer({}, handler);
  const h1 = http.createServer(handler);
  const open = new Set<tls.TLSSocket>();
  const handshakes = new WeakMap<net.Socket, NodeJS.Timeout>();
  const material = opts.material.current();
  const server = tls.createServer({
    ca: material.ca,
    cert: material.cert,
    key: material.key,
    minVersion: "TLSv1.3",
    requestCert: true,
    rejectUnauthorized: true,
    handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
    ALPNProtocols: opts.onTunnel ? ["h2", "http/1.1", TUNNEL_ALPN] : ["h2", "http/1.1"],
  });
  server.maxConnections = MAX_TCP_CONNECTIONS;
  const stopWatching = keepServerCurrent(server, opts.material);
  // A connection has HANDSHAKE_TIMEOUT_MS to finish its handshake (a client that sends a
  // partial hello, or nothing, is not held open).
  server.on("connection", (raw: net.Socket) => {
    const timer = setTimeout(() => raw.destroy(), HANDSHAKE_TIMEOUT_MS);
    raw.once("close", () => clearTimeout(timer));
    handshakes.set(raw, timer);
  });
  server.on("secureConnection", (socket: tls.TLSSocket) => {
    const raw = (socket as tls.TLSSocket & { _parent?: net.Socket })._parent;
    if (raw) clearTimeout(handshakes.get(raw));
    const identity = socket.authorized ? peerIdentity(socket) : undefined;
    if (!identity) {
      opts.log.warn("refused a tls connection: its certificate holds no Conductor identity", {
        remote: socket.remoteAddress,
      });
      socket.destroy();
      return;
    }
    const peer = { kind: "tls" as const, identity };
    if (socket.alpnProtocol === TUNNEL_ALPN) {
      if (opts.onTunnel) opts.onTunnel(socket, peer);
      else socket.destroy();
      return;
    }
    open.add(socket);
    socket.once("close", () => open.delete(socket));
    if (socket.alpnProtocol === "h2") {
      h2.once("session", (s: http2.ServerHttp2Session) => peers.set(s, peer));
      h2.emit("connection", socket);
    } else {
      peers.set(socket, peer);
      h1.emit("connection", socket);
    }
  });
  server.on("tlsClientError", (e, socket) =>
    opts.log.debug("refused a tls handshake", { remote: socket.remoteAddress, error: e }),
  );
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  // Once listening, a failed accept is the one connection's loss.
  server.on("error", (e) => opts.log.warn("tcp listener error", { error: e }));
  for (const s of opts.services) health.set(s.typeName, "SERVING");
  health.set("", "SERVING");
  const bound = server.address() as net.AddressInfo;
  const close = async () => {
    health.set("", "NOT_SERVING");
    stopWatching();
    for (const s of open) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return {
    host: bound.address,
    port: bound.port,
    health,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * Dials `address` (host:port) with TLS 1.3 and this side's certificate, and accepts the server
 * only if its certificate chains to the cluster CA and names the `expect` role (its SPIFFE ID
 * stands in for a host name check, so nodes are reached by any address). Each call reads the
 * material's latest files.
 */
export function dialTls(
  address: string,
  material: TlsMaterial,
  expect: Role,
  alpn: string[] = ["h2"],
): tls.TLSSocket {
  const { host, port } = parseHostPort(address);
  const m = material.current();
  return tls.connect({
    host,
    port,
    ca: m.ca,
    cert: m.cert,
    key: m.key,
    minVersion: "TLSv1.3",
    ALPNProtocols: alpn,
    ...(net.isIP(host) ? {} : { servername: host }),
    checkServerIdentity: (_name, cert) => {
      const id = identityOf(new X509Certificate(cert.raw));
      if (id?.role === expect) return undefined;
      return new Error(
        `${address} is not a Conductor ${expect}: its certificate names ${id?.spiffeId ?? "no Conductor identity"}`,
      );
    },
  });
}

/** How often an idle connection is pinged, and how long a ping may go unanswered. */
const PING = { pingIntervalMs: 5_000, pingTimeoutMs: 10_000 };

/** A gRPC client transport to `address` over TCP with mutual TLS (see dialTls). */
export function tlsTransport(
  address: string,
  material: TlsMaterial,
  expect: Role,
  interceptors: Interceptor[] = [],
): Transport {
  return createGrpcTransport({
    baseUrl: `https://${address}`,
    interceptors,
    ...PING,
    nodeOptions: { createConnection: () => dialTls(address, material, expect) },
  });
}

/**
 * A gRPC client transport over a node's tunnel (the Orchestrator's side): every call goes over
 * that one connection's HTTP/2 session; once it is gone, calls fail UNAVAILABLE until the node
 * dials again (and a new transport is made for the new connection). Never reconnects by itself,
 * so it holds no state that a connection lost mid-handshake could leave stuck.
 */
export function tunnelTransport(
  socket: tls.TLSSocket,
  interceptors: Interceptor[] = [],
): Transport {
  const session = http2.connect("http://tunnel", { createConnection: () => socket });
  session.on("error", () => undefined); // each call sees its own stream's error
  socket.once("close", () => session.destroy());
  return createGrpcTransport({
    baseUrl: "http://tunnel",
    interceptors,
    sessionManager: {
      authority: "http://tunnel",
      request(method, path, headers, options) {
        if (session.closed || session.destroyed || socket.destroyed) {
          return Promise.reject(
            new ConnectError("the node's tunnel is closed; it dials again", Code.Unavailable),
          );
        }
        return Promise.resolve(
          session.request({ ...headers, ":method": method, ":path": path }, options),
        );
      },
      notifyResponseByteRead: () => undefined,
    },
  });
}

/** A transport whose every call is UNAVAILABLE with `reason` (a joined node before its tunnel). */
export function closedTransport(reason: string): Transport {
  return createGrpcTransport({
    baseUrl: "http://tunnel",
    sessionManager: {
      authority: "http://tunnel",
      request: () => Promise.reject(new ConnectError(reason, Code.Unavailable)),
      notifyResponseByteRead: () => undefined,
    },
  });
}

/**
 * Serves gRPC on a tunnel connection this side dialled (the joined node's side): the far end
 * is the client. Resolves when the connection ends.
 */
export function serveOnTunnel(
  socket: tls.TLSSocket,
  opts: Omit<ServeOptions, "socketPath">,
  identity: Extract<Peer, { kind: "tls" }>,
): Promise<void> {
  const handler = rpcHandler(opts, new HealthRegistry(), () =>
    createContextValues().set(PEER, identity),
  );
  const h2 = http2.createServer({}, handler);
  return new Promise((resolve) => {
    socket.once("close", () => resolve());
    h2.emit("connection", socket);
  });
}
