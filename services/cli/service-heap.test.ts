import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { startService } from "../../test/harness.ts";
import { SERVICE_NODE_FLAGS } from "./service-heap.ts";

const dir = mkdtempSync(path.join(tmpdir(), "service-heap-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** `node bin/conductor.js orchestrator` as a user starts it: no Node flags of ours. */
async function orchestrator(name: string, env: Record<string, string> = {}) {
  const where = path.join(dir, name);
  const asUser = ((file: string, args: string[], options: object) =>
    spawn(
      file,
      args.filter((a) => !SERVICE_NODE_FLAGS.includes(a)),
      options,
    )) as typeof spawn;
  return startService(
    "orchestrator",
    ["--socket-dir", path.join(where, "run"), "--data-dir", path.join(where, "data")],
    { CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1", ...env },
    undefined,
    asUser,
  );
}

/** The Node flags the process runs with now (its command line before the script). */
function nodeFlags(pid: number): string[] {
  const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  return argv.slice(
    1,
    argv.findIndex((a) => a.endsWith("conductor.js")),
  );
}

describe("the services' heap settings", () => {
  it("a service started without them runs with them, in the same process", async () => {
    const service = await orchestrator("plain");
    try {
      expect(nodeFlags(service.proc.pid!)).toEqual(SERVICE_NODE_FLAGS);
    } finally {
      await service.stop();
    }
    // The signal reached the service itself, which stopped cleanly.
    expect(service.proc.exitCode).toBe(0);
  });

  it("an operator's own heap flags win", async () => {
    const service = await orchestrator("operator", { NODE_OPTIONS: "--max-semi-space-size=32" });
    try {
      expect(nodeFlags(service.proc.pid!)).toEqual([]);
      const status = readFileSync(`/proc/${service.proc.pid!}/environ`, "utf8");
      expect(status).toContain("NODE_OPTIONS=--max-semi-space-size=32");
    } finally {
      await service.stop();
    }
  });
});
