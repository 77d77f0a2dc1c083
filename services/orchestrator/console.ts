import { randomBytes, timingSafeEqual } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import http from "node:http";
import type http2 from "node:http2";
import type net from "node:net";
import path from "node:path";
import { createContextValues, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { PEER, tokenNeeded } from "../shared/authz.ts";
import { HealthRegistry } from "../shared/health.ts";
import { parseHostPort } from "../shared/host-port.ts";
import type { Logger } from "../shared/log.ts";
import { serveTls } from "../shared/tcp.ts";
import type { TlsMaterial } from "../shared/tls.ts";
import { rpcHandler, type NodeHandlerFn } from "../shared/transport.ts";

/** Where `npm run build:console` (run by `npm ci`) leaves the console's files. */
export const CONSOLE_ASSETS = path.resolve(import.meta.dirname, "../../console/dist");

/** Most bytes of built files the console holds in memory; a bigger build is refused. */
const MAX_ASSET_BYTES = 32 * 1024 * 1024;
/** Most connections the console holds at once (each live view holds one or two). */
const MAX_CONNECTIONS = 256;
/**
 * How often the loopback console looks for connections whose reader stopped reading (ms): one
 * that made no progress on what it has to send at two looks in a row is closed.
 */
const STALL_CHECK_MS = 5_000;

/**
 * What every response of the console carries: the page may load only its own scripts and
 * talk only to its own origin; it is never framed; the token in its address is never sent on
 * as a referrer.
 */
const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy":
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
};

const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
  ".woff2": "font/woff2",
  ".map": "application/json",
  ".txt": "text/plain; charset=utf-8",
};

/** A running console: `url` is what to open (on loopback it holds the token). */
export interface ConsoleServer extends AsyncDisposable {
  url: string;
  close(): Promise<void>;
}

/** What the console serves and where. */
export interface ConsoleOptions {
  /** observability.console: host:port (port 0 picks a free one). */
  listen: string;
  routes: (router: ConnectRouter) => void;
  interceptors?: Interceptor[];
  log: Logger;
  /** The server's TLS material: required on any address but loopback (mutual TLS). */
  material?: TlsMaterial;
  /** The built files (default CONSOLE_ASSETS). */
  assets?: string;
  /** The token a loopback console asks for (default: 32 random bytes, base64url). */
  token?: string;
}

/** Whether `host` (an address or name as configured) is this machine's loopback. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * Serves the web console: its built files and the OrchestratorService over the Connect
 * protocol (and gRPC-Web), for connect-web in the browser. On loopback, plain HTTP, and every
 * call must carry `Authorization: Bearer <token>` (else UNAUTHENTICATED); the token is in
 * `url`, which `conductor up` prints. On any other address, HTTPS with client certificates
 * chained to the cluster CA (as the TCP API; `material` is required, else it throws). The
 * files are read once, at start; without a build the console answers 503 saying how to build.
 */
export async function serveConsole(opts: ConsoleOptions): Promise<ConsoleServer> {
  const { host, port } = parseHostPort(opts.listen);
  const files = staticFiles(opts.assets ?? CONSOLE_ASSETS, opts.log);
  const base = { services: [OrchestratorService], routes: opts.routes, log: opts.log };
  const interceptors = opts.interceptors ?? [];
  if (!isLoopback(host)) {
    if (!opts.material) {
      throw new Error(
        `observability.console (${opts.listen}) is not a loopback address: the console serves other hosts only over mutual TLS, so set tls.ca_file, tls.cert_file and tls.key_file (conductor certs), or serve it on 127.0.0.1`,
      );
    }
    const tcp = await serveTls({
      ...base,
      interceptors,
      listen: opts.listen,
      material: opts.material,
      fallback: files,
      // The headers on every answer; another site's page is refused (its Origin is not ours).
      guard: (req, res) => {
        for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
        return otherOrigin(req, "https");
      },
    });
    return {
      url: `https://${shownHost(tcp.host)}:${tcp.port}/`,
      close: () => tcp.close(),
      [Symbol.asyncDispose]: () => tcp.close(),
    };
  }

  const token = opts.token ?? randomBytes(32).toString("base64url");
  const expected = Buffer.from(`Bearer ${token}`);
  const handler = rpcHandler(
    {
      ...base,
      interceptors,
      connect: true,
      grpcWeb: true,
      fallback: files,
      guard: (req, res) => {
        for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
        const why = foreign(req as http.IncomingMessage, bound.port);
        if (why) return why;
        if (req.method !== "POST") {
          // Only an API call has a body to read; one sent with a file's GET would hold the
          // connection until the request timeout.
          const body = req.headers["transfer-encoding"] ?? Number(req.headers["content-length"]);
          if (body)
            return {
              status: 400,
              contentType: "text/plain",
              body: `a ${req.method} carries no body\n`,
            };
          return "";
        }
        if (holds(req, expected)) return "";
        // A call without the token is answered at its headers, its body unread (authz.ts
        // refuses it too): one that dribbles its body in cannot hold a connection for long.
        return {
          status: 401,
          contentType: "application/json",
          body: JSON.stringify({
            code: "unauthenticated",
            message: tokenNeeded((req.url ?? "").split("?")[0]!.slice(1)),
          }),
        };
      },
    },
    new HealthRegistry(),
    (req) => createContextValues().set(PEER, { kind: "console", token: holds(req, expected) }),
  );
  // A connection that sends nothing, or its headers slowly, is cut within seconds, so idle
  // ones cannot hold all MAX_CONNECTIONS for long.
  const server = http.createServer(
    { headersTimeout: 5_000, requestTimeout: 30_000, connectionsCheckingInterval: 1_000 },
    handler,
  );
  server.maxConnections = MAX_CONNECTIONS;
  const stalls = closeStalled(server);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", (e) => opts.log.warn("console listener error", { error: e }));
  const bound = server.address() as net.AddressInfo;
  const close = async () => {
    clearInterval(stalls);
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections(); // live views' streams included
    await closed;
  };
  return {
    url: `http://${shownHost(bound.address)}:${bound.port}/?token=${token}`,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * Closes every connection of `server` whose reader stopped reading: bytes wait to be sent at
 * two looks `everyMs` apart and none went out between them (pipelined requests for files
 * that are never read would otherwise hold their connection, and what it has to send, for
 * ever). An idle connection, a live view's quiet stream included, has nothing waiting.
 * Returns the timer, for close().
 */
export function closeStalled(server: http.Server, everyMs = STALL_CHECK_MS): NodeJS.Timeout {
  const sent = new Map<net.Socket, number>();
  server.on("connection", (socket: net.Socket) => {
    sent.set(socket, -1);
    socket.once("close", () => sent.delete(socket));
  });
  const timer = setInterval(() => {
    for (const [socket, before] of sent) {
      const out = socket.bytesWritten - socket.writableLength;
      // A reset drops what waits to be sent; a plain close would leave it (MBs a connection)
      // in the kernel for as long as the reader keeps its end open.
      if (socket.writableLength > 0 && out === before) socket.resetAndDestroy();
      else sent.set(socket, socket.writableLength > 0 ? out : -1);
    }
  }, everyMs);
  timer.unref();
  return timer;
}

/** Whether a request carries the token (compared in constant time). */
function holds(req: http.IncomingMessage | http2.Http2ServerRequest, expected: Buffer): boolean {
  const given = Buffer.from(String(req.headers["authorization"] ?? ""));
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/**
 * Why a request to the loopback console is refused, or "" to serve it: its Host must name
 * loopback at the console's port (a DNS-rebinding page names its own host), and a browser
 * request from another origin (another site's script) is refused.
 */
function foreign(req: http.IncomingMessage, port: number): string {
  const hosts = req.rawHeaders.filter((v, i) => i % 2 === 0 && v.toLowerCase() === "host");
  if (hosts.length > 1) return "a request may name one Host, and this one names several";
  const hostHeader = req.headers.host ?? "";
  let hostName: string;
  try {
    const h = parseHostPort(hostHeader);
    if (h.port !== port) return `Host ${hostHeader} is not this console's port ${port}`;
    hostName = h.host;
  } catch {
    return `Host "${hostHeader}" is not host:port`;
  }
  if (!isLoopback(hostName)) return `Host ${hostHeader} is not a loopback name`;
  return otherOrigin(req, "http");
}

/**
 * Why a browser request from another origin (another site's script) is refused, or "" for
 * one from the console's own pages, or from no browser (no Origin header).
 */
function otherOrigin(req: http.IncomingMessage | http2.Http2ServerRequest, scheme: string): string {
  const origin = req.headers.origin;
  const host = req.headers.host ?? req.headers[":authority"];
  if (origin === undefined || origin === `${scheme}://${String(host)}`) return "";
  return `requests from ${origin} are refused: the console answers only its own pages`;
}

/** An address as it goes into a URL (IPv6 in brackets). */
function shownHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

interface Asset {
  body: Buffer;
  type: string;
  /** Files under /assets/ are named by their content's hash: cached for good. */
  immutable: boolean;
}

/**
 * The built files, read once into memory, answered for GET and HEAD. A path without an
 * extension that names no file gets index.html (the console's own routes, e.g. /tasks/ID).
 */
function staticFiles(dir: string, log: Logger): NodeHandlerFn {
  const assets = readAssets(dir);
  if (assets.size === 0) {
    log.warn("the console is not built: run `npm run build:console`", { assets: dir });
  }
  return (req, res) => {
    const send = (status: number, body: string | Buffer, headers: Record<string, string>) => {
      res.writeHead(status, headers);
      if (req.method === "HEAD") res.end();
      else res.end(body);
    };
    const text = { "content-type": "text/plain; charset=utf-8" };
    if (req.method !== "GET" && req.method !== "HEAD") {
      send(405, "the console serves its files with GET; its API is the Connect protocol\n", {
        ...text,
        allow: "GET, HEAD",
      });
      return;
    }
    if (assets.size === 0) {
      send(503, "the console is not built: run `npm run build:console` and restart\n", text);
      return;
    }
    const urlPath = (req.url ?? "/").split("?")[0]!;
    const asset =
      assets.get(urlPath) ?? (path.extname(urlPath) === "" ? assets.get("/index.html") : undefined);
    if (!asset) {
      send(404, `no such file: ${urlPath.slice(0, 200)}\n`, text);
      return;
    }
    send(200, asset.body, {
      "content-type": asset.type,
      "cache-control": asset.immutable ? "public, max-age=31536000, immutable" : "no-cache",
    });
  };
}

/** Every file under `dir` by its URL path; none when the folder is missing. */
function readAssets(dir: string): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  let names: string[];
  try {
    names = readdirSync(dir, { recursive: true, encoding: "utf8" });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return assets;
    throw e;
  }
  let total = 0;
  for (const name of names.sort()) {
    const file = path.join(dir, name);
    if (!statSync(file).isFile()) continue;
    const body = readFileSync(file);
    total += body.length;
    if (total > MAX_ASSET_BYTES) {
      throw new Error(`the console's files in ${dir} pass ${MAX_ASSET_BYTES} bytes; rebuild it`);
    }
    const urlPath = "/" + name.split(path.sep).join("/");
    assets.set(urlPath, {
      body,
      type: CONTENT_TYPES[path.extname(name)] ?? "application/octet-stream",
      immutable: urlPath.startsWith("/assets/"),
    });
  }
  return assets;
}
