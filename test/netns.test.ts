import { execFile, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { eventually, PYTHON, RAW_CALL, ROOT } from "./harness.ts";
import { makeNet, type NetHost, type TestNet } from "./netns.ts";
import { makeCerts } from "./certs.ts";

const NODE = process.execPath;
const ECHO_SERVER = path.join(ROOT, "test", "clients", "echo-server.ts");

/** A TCP server on HOST:0 that greets each connection with its NAME, then closes it. */
const TCP_SERVER = `
const [host, name] = process.argv.slice(1);
const server = require("node:net").createServer((c) => c.end("hello from " + name));
server.listen(0, host, () => console.log(JSON.stringify({ ready: true, port: server.address().port })));
`;
/** Connects to HOST:PORT and prints what it was sent, the error's code, or "timeout". */
const TCP_CLIENT = `
const [host, port, ms] = process.argv.slice(1);
const s = require("node:net").connect(Number(port), host);
const timer = setTimeout(() => { console.log("timeout"); process.exit(2); }, Number(ms));
let got = "";
s.setEncoding("utf8").on("data", (d) => (got += d));
s.on("end", () => { clearTimeout(timer); console.log(got); });
s.on("error", (e) => { clearTimeout(timer); console.log(e.code); process.exitCode = 1; });
`;

/** The `{"ready":true,"port":N}` line a started server prints; rejects if it exits first. */
async function readyPort(child: ChildProcess, what: string): Promise<number> {
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const lines = createInterface({ input: child.stdout! });
  try {
    return await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${what} not ready in 15 s`)), 15_000);
      lines.once("line", (line) => {
        clearTimeout(timer);
        resolve((JSON.parse(line) as { port: number }).port);
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`${what} exited with ${code}:\n${stderr}`));
      });
    });
  } finally {
    lines.close();
  }
}

/** Starts the greeting TCP server in `host`, bound to `bind` (its address by default). */
async function tcpServer(host: NetHost, bind = host.address): Promise<number> {
  const child = host.spawn(NODE, ["-e", TCP_SERVER, bind, host.ns], { stdio: "pipe" });
  return readyPort(child, `TCP server in ${host.ns}`);
}

/** What a client in `from` gets from address:port: "hello from …", an error code or "timeout". */
async function dial(from: NetHost, address: string, port: number, ms = 2_000): Promise<string> {
  const { stdout } = await from.exec(NODE, ["-e", TCP_CLIENT, address, String(port), String(ms)]);
  return stdout.trim();
}

describe("test network: hosts in network namespaces of their own", () => {
  let net: TestNet;
  let a: NetHost;
  let b: NetHost;

  beforeAll(async () => {
    net = await makeNet(2);
    [a, b] = net.hosts as [NetHost, NetHost];
    return () => net.close();
  });

  it("gives each host its own address on one private /24", () => {
    expect(a.address).toMatch(/^10\.\d+\.\d+\.2$/);
    expect(b.address).toBe(a.address.replace(/\.2$/, ".3"));
    expect(a.ns).not.toBe(b.ns);
    for (const h of net.hosts) expect(h.ns.startsWith(net.id)).toBe(true);
  });

  it("a server in host A answers a client in host B at A's address", async () => {
    const port = await tcpServer(a);
    expect(await dial(b, a.address, port)).toBe(`hello from ${a.ns}`);
  });

  it("host B reaches its own loopback, never the test process's", async () => {
    const root: Server = createServer((c) => c.end("hello from the root namespace"));
    await new Promise<void>((resolve) => root.listen(0, "127.0.0.1", resolve));
    try {
      const rootPort = (root.address() as { port: number }).port;
      expect(await dial(b, "127.0.0.1", rootPort)).toBe("ECONNREFUSED");
    } finally {
      await new Promise((resolve) => root.close(resolve));
    }
    const port = await tcpServer(b, "127.0.0.1");
    expect(await dial(b, "127.0.0.1", port)).toBe(`hello from ${b.ns}`);
    // A server on A's loopback is not on A's address.
    const hidden = await tcpServer(a, "127.0.0.1");
    expect(await dial(b, a.address, hidden)).toBe("ECONNREFUSED");
  });

  it("linkDown cuts host A off: a new connection from B fails; linkUp restores it", async () => {
    const port = await tcpServer(a);
    expect(await dial(b, a.address, port)).toBe(`hello from ${a.ns}`);
    await a.linkDown();
    try {
      // No answer (SYN dropped) or no neighbour (ARP unanswered): either way, within 2 s.
      expect(await dial(b, a.address, port, 2_000)).toMatch(/^(timeout|EHOSTUNREACH)$/);
    } finally {
      await a.linkUp(); // the next tests need A on the network, whatever happened here
    }
    expect(await dial(b, a.address, port)).toBe(`hello from ${a.ns}`);
  });

  describe("raw_call.py", () => {
    let dir: string;
    let certs: EchoCerts;
    let tls: string;

    beforeAll(async () => {
      dir = mkdtempSync(path.join(tmpdir(), "conductor-netns-"));
      certs = await echoCerts(path.join(dir, "ca"), "echo.conductor.test");
      tls = [certs.ca, certs.clientCert, certs.clientKey].join(",");
      return () => rmSync(dir, { recursive: true, force: true });
    });

    /** raw_call.py run inside `from`, its stdout lines decoded. */
    async function pyCall(from: NetHost, args: string[]) {
      const { code, stdout, stderr } = await from.exec(PYTHON, [RAW_CALL, ...args]);
      const lines = stdout.split("\n").filter(Boolean);
      return { code, stderr, got: lines.map((l) => Buffer.from(l, "base64").toString()) };
    }
    const hello = Buffer.from("hello").toString("base64");

    it("calls a server in another host over mutual TLS, unary and streaming", async () => {
      const server = a.spawn(
        NODE,
        [ECHO_SERVER, `${a.address}:0`, `${certs.ca},${certs.serverCert},${certs.serverKey}`],
        { stdio: "pipe" },
      );
      const port = await readyPort(server, "echo server");
      const target = `${a.address}:${port}`;
      const via = ["--tls", tls, "--authority", "echo.conductor.test", target];

      const unary = await pyCall(b, [...via, "/test.Echo/Echo", hello, "unary"]);
      expect(unary).toEqual({ code: 0, stderr: "", got: ["hello"] });
      const stream = await pyCall(b, [...via, "/test.Echo/Repeat", hello, "stream"]);
      expect(stream).toEqual({ code: 0, stderr: "", got: ["hello", "hello", "hello"] });

      // The certificate names echo.conductor.test, not the address: without --authority it fails.
      const mismatch = await pyCall(b, ["--tls", tls, target, "/test.Echo/Echo", hello, "unary"]);
      expect(mismatch.code).toBe(3);
      expect(mismatch.stderr).toMatch(/^ERROR UNAVAILABLE .*is not in peer certificate/m);
      // Mutual: the server refuses a client certificate its CA never signed, and the client a
      // server certificate its CA never signed (grpc core logs the handshake before our line).
      const stranger = await echoCerts(path.join(dir, "other-ca"), "x.conductor.test");
      for (const files of [
        [certs.ca, stranger.clientCert, stranger.clientKey],
        [stranger.ca, certs.clientCert, certs.clientKey],
      ]) {
        const refused = await pyCall(b, [
          ...["--tls", files.join(","), "--authority", "echo.conductor.test", target],
          ...["/test.Echo/Echo", hello, "unary"],
        ]);
        expect(refused.code).toBe(3);
        expect(refused.got).toEqual([]);
        expect(refused.stderr).toMatch(/^ERROR UNAVAILABLE /m);
      }
    });

    it('says "ERROR UNAVAILABLE" where nothing listens', async () => {
      const got = await pyCall(b, [
        ...["--tls", tls, "--authority", "echo.conductor.test", "--timeout", "10"],
        ...[`${a.address}:1`, "/test.Echo/Echo", hello, "unary"],
      ]);
      expect(got.code).toBe(3);
      expect(got.stderr).toMatch(/^ERROR UNAVAILABLE .*Connection refused/);
    });

    it("still calls a Unix socket without TLS, as test/e2e/bounds.test.ts does", async () => {
      const socket = path.join(dir, "echo.sock");
      // The server runs in host A, so the network's close() ends it; a Unix socket is a file,
      // reached from any namespace, here from the test process's own.
      await readyPort(a.spawn(NODE, [ECHO_SERVER, `unix://${socket}`], { stdio: "pipe" }), "echo");
      const args = [RAW_CALL, socket, "/test.Echo/Repeat", hello, "stream"];
      const { stdout } = await promisify(execFile)(PYTHON, args);
      expect(stdout).toBe(`${hello}\n${hello}\n${hello}\n`);
    });
  });
});

describe("test network: close()", () => {
  it("kills every process in the namespaces and deletes them", async () => {
    const net = await makeNet(2);
    const [a] = net.hosts as [NetHost];
    // A child that starts a grandchild: close() must end both, not only what spawn() returned.
    const sh = a.spawn("sh", ["-c", "sleep 600 & echo started; wait"], { stdio: "pipe" });
    await new Promise((resolve) => sh.stdout!.once("data", resolve));
    const pids = await a.pids();
    expect(pids.length).toBeGreaterThanOrEqual(2);

    await net.close();
    const { stdout } = await promisify(execFile)("/sbin/ip", ["netns", "list"]);
    expect(stdout.split("\n").filter((line) => line.startsWith(net.id))).toEqual([]);
    expect(pids.filter(alive)).toEqual([]);
    expect(sh.exitCode !== null || sh.signalCode !== null).toBe(true);
    await net.close(); // a second close is harmless
  });

  it("a failed test leaves nothing either: await using closes the network", async () => {
    let id = "";
    await expect(
      (async () => {
        await using net = await makeNet(1);
        id = net.id;
        net.hosts[0]!.spawn("sleep", ["600"]);
        throw new Error("the test failed");
      })(),
    ).rejects.toThrow("the test failed");
    const { stdout } = await promisify(execFile)("/sbin/ip", ["netns", "list"]);
    expect(stdout).not.toContain(id);
  });

  it("a process that exits without close() still deletes its namespaces and ends their processes", async () => {
    // Another Node process makes a network, starts a process in it, and exits at once.
    const script = `
      const { makeNet } = await import(${JSON.stringify(path.join(ROOT, "test", "netns.ts"))});
      const net = await makeNet(2);
      const sleeper = net.hosts[1].spawn("sh", ["-c", "echo in; exec sleep 600"]);
      await new Promise((resolve) => sleeper.stdout.once("data", resolve));
      console.log(JSON.stringify({ id: net.id, pids: await net.hosts[1].pids() }));
      process.exit(0);
    `;
    const { stdout } = await promisify(execFile)(NODE, ["--input-type=module", "-e", script]);
    const { id, pids } = JSON.parse(stdout) as { id: string; pids: number[] };
    expect(pids.length).toBeGreaterThan(0);
    const list = await promisify(execFile)("/sbin/ip", ["netns", "list"]);
    expect(list.stdout).not.toContain(id);
    // SIGKILLed as the process exited; the kernel may take a moment to end them.
    await eventually(
      async () => (pids.some(alive) ? undefined : true),
      "the processes to end",
      5_000,
    );
  });
});

/** Whether a process runs (exists and is no zombie). */
function alive(pid: number): boolean {
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** A CA's file, and a server's (named `serverName`) and a client's certificate and key. */
interface EchoCerts {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** Certificates for the echo server and its client, made by `conductor certs` (test/certs.ts). */
async function echoCerts(dir: string, serverName: string): Promise<EchoCerts> {
  const made = await makeCerts(dir, [
    { role: "orchestrator", name: "echo", dns: [serverName] },
    { role: "client", name: "client" },
  ]);
  const server = made.files("echo");
  const client = made.files("client");
  return {
    ca: made.caFile,
    serverCert: server.certFile,
    serverKey: server.keyFile,
    clientCert: client.certFile,
    clientKey: client.keyFile,
  };
}
