import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../shared/log.ts";
import { HostRegistry } from "./hosts.ts";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A Unix socket server of the test's own that misbehaves with every connection. */
async function peer(dir: string, name: string, onConnection: (s: net.Socket) => void) {
  const socketPath = path.join(dir, name);
  const open = new Set<net.Socket>();
  const server = net.createServer((s) => {
    open.add(s);
    s.on("error", () => undefined);
    onConnection(s);
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  cleanups.push(async () => {
    for (const s of open) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return socketPath;
}

describe("HostRegistry", () => {
  it("survives peers that hang up, speak garbage, hang or are missing; they contribute no agents", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-hosts-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const closes = await peer(dir, "closes.sock", (s) => s.destroy());
    const garbage = await peer(dir, "garbage.sock", (s) => s.end("HTTP/1.1 200 OK\r\n\r\nnope"));
    const silent = await peer(dir, "silent.sock", (s) => s.resume());
    const missing = path.join(dir, "missing.sock");
    const hosts = new HostRegistry([closes, garbage, silent, missing], 300, silentLogger);
    let polls = 0;
    const threePolls = new Promise<void>((resolve) =>
      hosts.start(50, () => {
        if (++polls === 3) resolve();
      }),
    );
    cleanups.push(() => hosts.stop());
    await threePolls;
    expect(hosts.links.map((l) => l.reachable)).toEqual([false, false, false, false]);
    expect(hosts.all()).toEqual([]);
  });
});
