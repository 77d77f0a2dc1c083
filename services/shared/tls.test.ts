import { X509Certificate } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expiredCert, foreignCa, makeCerts, signWithCa, type TestCerts } from "../../test/certs.ts";
import { leafExtensions } from "../cli/certs.ts";
import type { Logger } from "./log.ts";
import { identityOf, parseSpiffeId, spiffeId, uriSans } from "./spiffe.ts";
import {
  keepServerCurrent,
  peerCertificate,
  peerIdentity,
  TlsMaterial,
  TlsMaterialError,
  type Identity,
  type TlsFiles,
} from "./tls.ts";

let root: string;
let certs: TestCerts;
let server1: TlsFiles;
let alice: TlsFiles;
/** Made fresh for each test that needs its own (rotation rewrites files). */
let dirs = 0;
const freshDir = () => path.join(root, `d${++dirs}`);

beforeAll(async () => {
  root = mkdtempSync(path.join(tmpdir(), "conductor-tls-"));
  certs = await makeCerts(path.join(root, "tls"), [
    { role: "broker", name: "broker-1", dns: ["localhost"], ips: ["127.0.0.1"] },
    { role: "client", name: "alice" },
  ]);
  server1 = certs.files("broker-1");
  alice = certs.files("alice");
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("SPIFFE IDs", () => {
  it("are spiffe://conductor/<role>/<name>, parsed back strictly", () => {
    expect(spiffeId("agent-host", "node-1.a_b")).toBe("spiffe://conductor/agent-host/node-1.a_b");
    expect(parseSpiffeId("spiffe://conductor/broker/b1")).toEqual({
      role: "broker",
      name: "b1",
      spiffeId: "spiffe://conductor/broker/b1",
    });
    for (const bad of [
      "spiffe://conductor/broker/b1/x",
      "spiffe://conductor/broker/b1?x=1",
      "spiffe://conductor/broker/b1#x",
      "spiffe://conductor/broker/",
      "spiffe://conductor/broker",
      "spiffe://conductor/admin/b1",
      "spiffe://Conductor/broker/b1",
      "SPIFFE://conductor/broker/b1",
      "spiffe://conductor:443/broker/b1",
      "spiffe://x@conductor/broker/b1",
      "spiffe://other/broker/b1",
      "https://conductor/broker/b1",
      "spiffe://conductor/broker/-b1",
      "spiffe://conductor/broker/" + "a".repeat(64),
      "spiffe://conductor/broker/b%31",
      " spiffe://conductor/broker/b1",
    ])
      expect(parseSpiffeId(bad), bad).toBeUndefined();
    expect(() => spiffeId("broker", "a b")).toThrow(/"a b" is not a valid name/);
    expect(() => spiffeId("admin" as "broker", "a")).toThrow(/unknown role "admin"/);
  });

  it("come from URI SANs only, never from a value that merely contains one", () => {
    // As Node prints a DNS SAN holding ", URI:…" (made with openssl's config section syntax).
    const san =
      'DNS:"foo\\u002c URI:spiffe://conductor/orchestrator/evil", URI:spiffe://conductor/broker/b, IP Address:0:0:0:0:0:0:0:1';
    expect(uriSans(san)).toEqual(["spiffe://conductor/broker/b"]);
    expect(uriSans('DNS:"unterminated, URI:spiffe://conductor/broker/b')).toEqual([]);
    expect(uriSans("")).toEqual([]);
  });

  it("a certificate with none, or with two, names no identity", async () => {
    const dir = freshDir();
    const none = await signWithCa(dir, certs.dir, "none", {
      extensions: "subjectAltName = DNS:none.test\n",
    });
    const two = await signWithCa(dir, certs.dir, "two", {
      extensions: "subjectAltName = URI:spiffe://conductor/broker/a, URI:spiffe://other/broker/b\n",
    });
    const cert = (f: TlsFiles) => new X509Certificate(readFileSync(f.certFile));
    expect(identityOf(cert(none))).toBeUndefined();
    expect(identityOf(cert(two))).toBeUndefined();
    expect(identityOf(cert(server1))?.spiffeId).toBe("spiffe://conductor/broker/broker-1");
  });
});

describe("TlsMaterial.load", () => {
  it("reads a good set: identity, expiry, fingerprint", () => {
    using m = TlsMaterial.load(server1);
    const c = m.current();
    expect(c.identity).toEqual({
      role: "broker",
      name: "broker-1",
      spiffeId: "spiffe://conductor/broker/broker-1",
    });
    expect(c.notAfter.getTime()).toBeGreaterThan(Date.now() + 360 * 86_400_000);
    expect(c.fingerprint).toBe(new X509Certificate(c.cert).fingerprint256);
    expect(m.secureContext()).toBeDefined();
  });

  it("refuses a bad set, naming the file and what is wrong", async () => {
    const dir = freshDir();
    const junk = path.join(root, "junk.pem");
    writeFileSync(junk, "not a certificate\n");
    const cut = path.join(root, "cut.pem");
    writeFileSync(cut, readFileSync(server1.certFile, "utf8").slice(0, 300));
    const foreign = await foreignCa(path.join(dir, "foreign"));
    const expired = await expiredCert(dir, certs.dir, "broker", "old");
    const anonymous = await signWithCa(dir, certs.dir, "anonymous", {
      extensions: leafExtensions("spiffe://conductor/broker/x", [], []).replace(
        /^subjectAltName = .*$/m,
        "subjectAltName = DNS:anonymous.test",
      ),
    });
    const missing = path.join(root, "missing.crt");
    const cases: [TlsFiles, string, RegExp][] = [
      [{ ...server1, certFile: missing }, missing, /certificate file .* does not exist/],
      [{ ...server1, caFile: root }, root, /is a folder, not a file/],
      [{ ...server1, certFile: junk }, junk, /is not PEM/],
      [{ ...server1, certFile: cut }, cut, /holds no PEM certificate|cannot be parsed/],
      [{ ...server1, keyFile: junk }, junk, /is not PEM/],
      [{ ...server1, caFile: server1.certFile }, server1.certFile, /holds no CA certificate/],
      [{ ...server1, keyFile: alice.keyFile }, alice.keyFile, /does not match the certificate/],
      [{ ...foreign, caFile: certs.caFile }, foreign.certFile, /is not signed by the CA in/],
      [expired, expired.certFile, /expired on/],
      [anonymous, anonymous.certFile, /names no Conductor identity/],
    ];
    for (const [files, file, message] of cases) {
      let thrown: unknown;
      try {
        TlsMaterial.load(files).close();
      } catch (e) {
        thrown = e;
      }
      expect(thrown, String(message)).toBeInstanceOf(TlsMaterialError);
      expect((thrown as TlsMaterialError).file).toBe(file);
      expect((thrown as Error).message).toMatch(message);
      expect((thrown as Error).message).toContain(file);
    }
  });
});

describe("mutual TLS", () => {
  it("each side sees the other's identity", async () => {
    using material = TlsMaterial.load(server1);
    await using server = await startServer(material);
    using client = TlsMaterial.load(alice);
    const seen = await connect(server.port, { secureContext: client.secureContext() });
    expect(seen.serverSaw).toEqual({
      role: "client",
      name: "alice",
      spiffeId: "spiffe://conductor/client/alice",
    });
    expect(seen.clientSaw?.spiffeId).toBe("spiffe://conductor/broker/broker-1");
    expect(seen.protocol).toBe("TLSv1.3");
  });

  it("refuses a client with no certificate", async () => {
    using material = TlsMaterial.load(server1);
    await using server = await startServer(material);
    const serverError = server.nextError();
    await refused(server, { ca: readFileSync(certs.caFile) });
    expect((await serverError).message).toMatch(/peer did not return a certificate/i);
  });

  it("refuses a client whose certificate another CA signed", async () => {
    const foreign = await foreignCa(freshDir());
    using material = TlsMaterial.load(server1);
    await using server = await startServer(material);
    const client = { ...pem(foreign), ca: readFileSync(certs.caFile) };
    await refused(server, client);
    expect(await why(material, client)).toBe("UNABLE_TO_VERIFY_LEAF_SIGNATURE");
  });

  it("refuses a client whose certificate has expired", async () => {
    const expired = await expiredCert(freshDir(), certs.dir, "client", "late");
    using material = TlsMaterial.load(server1);
    await using server = await startServer(material);
    await refused(server, pem(expired));
    expect(await why(material, pem(expired))).toBe("CERT_HAS_EXPIRED");
  });

  it("a client refuses a server of another CA; an unverified peer has no identity", async () => {
    const foreign = await foreignCa(freshDir(), "broker", "fake-broker");
    // A server that asks for a certificate but accepts any: peerIdentity must not trust it.
    await using lax = await startServer(pem(foreign), false);
    using client = TlsMaterial.load(alice);
    await expect(connect(lax.port, { secureContext: client.secureContext() })).rejects.toThrow(
      /self-signed certificate in certificate chain/,
    );
    const seen = await connect(lax.port, { ...pem(alice), rejectUnauthorized: false });
    expect(seen.clientSaw).toBeUndefined(); // the server's certificate is not verified
    expect(seen.serverSaw).toBeUndefined(); // nor the client's, by the foreign CA
  });
});

describe("rotation", () => {
  it("a re-issued certificate is served to new connections without a restart", async () => {
    const c = await makeCerts(freshDir(), [
      { role: "broker", name: "rotating", ips: ["127.0.0.1"] },
      { role: "client", name: "bob" },
    ]);
    using material = TlsMaterial.load(c.files("rotating"), recordingLogger().log, 20);
    await using server = await startServer(material);
    const client = pem(c.files("bob"));
    const before = await connect(server.port, client);
    expect(before.serverCert.fingerprint256).toBe(material.current().fingerprint);

    const changed = new Promise<void>((resolve) => material.onChange(resolve));
    await c.issue({ role: "broker", name: "rotating", ips: ["127.0.0.1"], dns: ["r.test"] });
    await changed;

    const after = await connect(server.port, client);
    expect(after.serverCert.fingerprint256).not.toBe(before.serverCert.fingerprint256);
    expect(after.serverCert.serialNumber).not.toBe(before.serverCert.serialNumber);
    expect(after.serverCert.fingerprint256).toBe(material.current().fingerprint);
    expect(after.serverCert.subjectAltName).toContain("DNS:r.test");
    expect(after.clientSaw?.spiffeId).toBe("spiffe://conductor/broker/rotating");
  });

  it("a bad set (a key that does not match) is warned about and the old material kept", async () => {
    const c = await makeCerts(freshDir(), [
      { role: "broker", name: "steady", ips: ["127.0.0.1"] },
      { role: "broker", name: "other", ips: ["127.0.0.1"] },
      { role: "client", name: "carol" },
    ]);
    const files = c.files("steady");
    const rec = recordingLogger();
    using material = TlsMaterial.load(files, rec.log, 20);
    await using server = await startServer(material);
    const client = pem(c.files("carol"));
    const before = await connect(server.port, client);

    const warned = rec.next("warn");
    copyFileSync(c.files("other").keyFile, files.keyFile);
    const warning = await warned;
    expect(warning.msg).toMatch(
      /not reloaded, the current one is kept: the key in .* does not match/,
    );
    expect(warning.fields?.["file"]).toBe(files.keyFile);
    expect(material.current().fingerprint).toBe(before.serverCert.fingerprint256);
    const during = await connect(server.port, client);
    expect(during.serverCert.fingerprint256).toBe(before.serverCert.fingerprint256);

    // Another identity, though well-formed, is refused as well.
    const refusedIdentity = rec.next("warn");
    copyFileSync(c.files("carol").certFile, files.certFile);
    copyFileSync(c.files("carol").keyFile, files.keyFile);
    expect((await refusedIdentity).msg).toMatch(
      /now names spiffe:\/\/conductor\/client\/carol, but this service runs as spiffe:\/\/conductor\/broker\/steady/,
    );

    // A proper issue mends it.
    const changed = new Promise<void>((resolve) => material.onChange(resolve));
    await c.issue({ role: "broker", name: "steady", ips: ["127.0.0.1"] });
    await changed;
    const after = await connect(server.port, client);
    expect(after.serverCert.fingerprint256).not.toBe(before.serverCert.fingerprint256);
    expect(rec.records.filter((r) => r.level === "warn")).toHaveLength(2); // each bad set once
  });
});

/**
 * A TLS server on 127.0.0.1, port 0, that answers each client it accepts with the identity it
 * saw and why the client's certificate did not verify (`verify` false accepts it all the same).
 */
async function startServer(material: TlsMaterial | tls.SecureContextOptions, verify = true) {
  const errors: Error[] = [];
  const waiting: ((e: Error) => void)[] = [];
  let accepted = 0;
  const server = tls.createServer(
    { requestCert: true, rejectUnauthorized: verify, minVersion: "TLSv1.3" },
    (socket) => {
      accepted++;
      const answer: Answer = {
        saw: peerIdentity(socket) ?? null,
        unverified: (socket.authorizationError as unknown as string | null) ?? null,
      };
      socket.end(JSON.stringify(answer));
    },
  );
  let stop = () => {};
  if (material instanceof TlsMaterial) stop = keepServerCurrent(server, material);
  else server.setSecureContext(material);
  server.on("tlsClientError", (e) => {
    const w = waiting.shift();
    if (w) w(e);
    else errors.push(e);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as { port: number }).port,
    /** How many connections it accepted. */
    accepted: () => accepted,
    /** The next failed handshake the server saw. */
    nextError: () =>
      new Promise<Error>((resolve) => {
        const e = errors.shift();
        if (e) resolve(e);
        else waiting.push(resolve);
      }),
    async [Symbol.asyncDispose]() {
      stop();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

type TestServer = Awaited<ReturnType<typeof startServer>>;

/** What the test server answers. */
interface Answer {
  saw: Identity | null;
  /** socket.authorizationError: why the client's certificate did not verify. */
  unverified: string | null;
}

interface Seen {
  /** The identity the server saw (what it answered). */
  serverSaw: Identity | undefined;
  /** Why the server found the client's certificate unverified, if it did. */
  unverified: string | null;
  /** The identity the client saw. */
  clientSaw: Identity | undefined;
  serverCert: X509Certificate;
  protocol: string | null;
}

/**
 * Connects to 127.0.0.1:`port` and reads the server's answer to its end; rejects on a TLS error,
 * or when the server closes without answering (a TLS 1.3 server refuses a client's certificate
 * after the client has finished its side of the handshake).
 */
function connect(port: number, options: tls.ConnectionOptions): Promise<Seen> {
  return new Promise((resolve, reject) => {
    let text = "";
    let serverCert: X509Certificate | undefined;
    let clientSaw: Identity | undefined;
    const socket = tls.connect({ host: "127.0.0.1", port, ...options }, () => {
      serverCert = peerCertificate(socket);
      clientSaw = peerIdentity(socket);
    });
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => (text += d));
    socket.on("error", reject);
    socket.on("end", () => {
      if (text === "" || !serverCert) reject(new Error("the server closed without answering"));
      else {
        const { saw, unverified } = JSON.parse(text) as Answer;
        const protocol = socket.getProtocol();
        resolve({ serverSaw: saw ?? undefined, unverified, clientSaw, serverCert, protocol });
      }
      socket.destroy();
    });
    socket.on("close", () => reject(new Error("closed before the server answered")));
  });
}

/** Checks the server refuses the client: the client gets no answer, the server accepts nothing. */
async function refused(server: TestServer, options: tls.ConnectionOptions): Promise<void> {
  await expect(connect(server.port, options)).rejects.toThrow();
  expect(server.accepted()).toBe(0);
}

/**
 * Why a server with `material` refuses the client: what a server that accepts every client
 * (rejectUnauthorized false) finds wrong with its certificate. A refusing Node server closes
 * the connection without saying why.
 */
async function why(material: TlsMaterial, options: tls.ConnectionOptions): Promise<string | null> {
  await using lax = await startServer(material.contextOptions(), false);
  const seen = await connect(lax.port, options);
  expect(seen.serverSaw).toBeUndefined(); // an unverified client has no identity
  return seen.unverified;
}

function pem(f: TlsFiles): tls.SecureContextOptions {
  return {
    ca: readFileSync(f.caFile),
    cert: readFileSync(f.certFile),
    key: readFileSync(f.keyFile),
  };
}

interface LogRecord {
  level: string;
  msg: string;
  fields: Record<string, unknown> | undefined;
}

/** A logger that keeps what it is told, and says when the next record of a level comes. */
function recordingLogger() {
  const records: LogRecord[] = [];
  const waiting: { level: string; resolve: (r: LogRecord) => void }[] = [];
  const at =
    (level: string) =>
    (msg: string, fields?: Record<string, unknown>): void => {
      const r = { level, msg, fields };
      records.push(r);
      const i = waiting.findIndex((w) => w.level === level);
      if (i >= 0) waiting.splice(i, 1)[0]!.resolve(r);
    };
  const log: Logger = {
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
    child: () => log,
  };
  return {
    log,
    records,
    next: (level: string) => new Promise<LogRecord>((resolve) => waiting.push({ level, resolve })),
  };
}
