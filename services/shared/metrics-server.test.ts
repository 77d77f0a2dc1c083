import { Counter, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { serveMetrics } from "./metrics-server.ts";

describe("the /metrics endpoint", () => {
  it("serves its registry in the Prometheus text format on a free port, and nothing else", async () => {
    const registry = new Registry();
    new Counter({ name: "demo_total", help: "A demo.", registers: [registry] }).inc(3);
    await using server = await serveMetrics(registry, "127.0.0.1", 0);
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const res = await fetch(server.url);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe(registry.contentType);
    expect(await res.text()).toContain("demo_total 3");
    expect((await fetch(server.url.replace("/metrics", "/"))).status).toBe(404);
    expect((await fetch(server.url, { method: "POST" })).status).toBe(404);
  });
});
