import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";

/** A running /metrics endpoint; url is where it answers. */
export interface MetricsServer extends AsyncDisposable {
  url: string;
  close(): Promise<void>;
}

/**
 * Serves a registry in the Prometheus text format on http://host:port/metrics (port 0 picks
 * a free one; the bound address is in `url`).
 */
export async function serveMetrics(
  registry: Registry,
  host: string,
  port: number,
): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" || path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("only GET /metrics is served\n");
      return;
    }
    registry.metrics().then(
      (body) => res.writeHead(200, { "content-type": registry.contentType }).end(body),
      (e: unknown) =>
        res
          .writeHead(500, { "content-type": "text/plain" })
          .end(`collecting metrics failed: ${String(e)}\n`),
    );
  });
  server.keepAliveTimeout = 65_000; // longer than Prometheus' scrape interval: reuse connections
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const shown = address.family === "IPv6" ? `[${address.address}]` : address.address;
  const close = async () => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections(); // idle keep-alive connections of scrapers included
    await closed;
  };
  return {
    url: `http://${shown}:${address.port}/metrics`,
    close,
    [Symbol.asyncDispose]: close,
  };
}
