import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../harness.ts";
import { promtool } from "./prometheus.ts";

const deploy = (...p: string[]) => path.join(ROOT, "deploy", ...p);

/** The Prometheus and Grafana files in deploy/, checked by the real tools. */
describe("deploy/ for Prometheus and Grafana", () => {
  it("has alerting rules promtool accepts, and whose unit tests pass", async () => {
    expect(await promtool("check", "rules", deploy("prometheus", "alerts.yml"))).toMatch(
      /SUCCESS: 8 rules found/,
    );
    expect(await promtool("test", "rules", deploy("prometheus", "alerts.test.yml"))).toMatch(
      /SUCCESS/,
    );
  });

  it("has a scrape configuration promtool accepts, scraping both services", async () => {
    expect(await promtool("check", "config", deploy("prometheus", "prometheus.yml"))).toMatch(
      /SUCCESS: .*prometheus\.yml is valid/,
    );
    const config = readFileSync(deploy("prometheus", "prometheus.yml"), "utf8");
    expect(config).toContain('"127.0.0.1:9464"');
    expect(config).toContain('"127.0.0.1:9465"');
    expect(config).toContain('"127.0.0.1:9466"');
  });

  it("has a dashboard Grafana can import as is", () => {
    const dash = JSON.parse(
      readFileSync(deploy("grafana", "conductor-dashboard.json"), "utf8"),
    ) as {
      uid: string;
      templating: { list: { name: string; type: string }[] };
      panels: {
        type: string;
        title: string;
        datasource?: { uid: string };
        targets?: { expr: string; refId: string }[];
      }[];
    };
    expect(dash.uid).toBe("conductor-overview");
    expect(dash.templating.list).toContainEqual(
      expect.objectContaining({ name: "datasource", type: "datasource" }),
    );
    const titles = dash.panels.map((p) => p.title.toLowerCase()).join("\n");
    for (const topic of [
      "broker",
      "throughput",
      "queue depth",
      "queue wait",
      "latency",
      "utilisation",
      "failed",
      "spend",
    ])
      expect(titles).toContain(topic);
    for (const p of dash.panels.filter((p) => p.type !== "row")) {
      expect(p.datasource?.uid, p.title).toBe("${datasource}");
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) expect(t.expr, p.title).toMatch(/conductor_/);
    }
  });
});
