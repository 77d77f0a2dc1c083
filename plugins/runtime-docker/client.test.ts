// The engine probe against an engine that takes connections and never answers (a hung
// daemon, a relay with nothing behind it): unhealthy at the bound, and no connection kept.
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { eventually } from "../../test/harness.ts";
import { connectEngine } from "./client.ts";

describe("the engine probe", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "engine-probe-"));
  const open = new Set<net.Socket>();
  const silent = net.createServer((s) => {
    open.add(s);
    s.on("close", () => open.delete(s));
    s.resume(); // reads (and drops) what comes, so a client's close is seen; answers nothing
  });
  afterAll(async () => {
    for (const s of open) s.destroy();
    await new Promise((r) => silent.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  it("gives up on an engine that never answers, and closes what it opened", async () => {
    const socketPath = path.join(dir, "engine.sock");
    await new Promise<void>((r) => silent.listen(socketPath, r));
    const engine = connectEngine({
      runtimeName: "docker",
      engineLabel: "the Docker Engine",
      socketPath,
      startHint: "start it",
      init: false,
      probeTimeoutMs: 300,
    });
    for (let i = 0; i < 3; i++) {
      const fp = await engine.fingerprint();
      expect(fp.healthy).toBe(false);
      expect(fp.detail).toMatch(
        /cannot reach the Docker Engine at .*engine\.sock \(ETIMEDOUT\): it takes calls but did not answer in 0\.3 s: it may be hung/,
      );
    }
    await eventually(
      async () => (open.size === 0 ? true : undefined),
      "probe connections closed",
      5000,
    );
  });
});
