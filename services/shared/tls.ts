// Mutual TLS material of a Conductor service: its certificate, key and the cluster CA, read from
// files, checked, and reloaded when the files change, so certificates rotate without a restart.
import { createPrivateKey, X509Certificate, type KeyObject } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import tls from "node:tls";
import { silentLogger, type Logger } from "./log.ts";
import { identityOf, type Identity } from "./spiffe.ts";

export {
  identityOf,
  isRole,
  NAME_PATTERN,
  parseSpiffeId,
  ROLES,
  spiffeId,
  type Identity,
  type Role,
} from "./spiffe.ts";

/**
 * The identity of a verified peer of a TLS socket: its certificate's single spiffe://conductor/
 * URI SAN. Undefined when the peer is not verified (`socket.authorized` false), sent no
 * certificate, or its certificate has no such SAN or more than one SPIFFE URI.
 */
export function peerIdentity(socket: tls.TLSSocket): Identity | undefined {
  if (!socket.authorized) return undefined;
  const cert = peerCertificate(socket);
  return cert ? identityOf(cert) : undefined;
}

/**
 * The certificate a TLS socket's peer presented. Not `getPeerX509Certificate()`: on a client
 * socket (Node 20 and 24) it takes the certificate out of the connection's peer chain, so a
 * second call — by this code or any other — sees the next certificate of the chain, or none.
 * `getPeerCertificate()` copies the chain, and its `raw` is the certificate's DER.
 */
export function peerCertificate(socket: tls.TLSSocket): X509Certificate | undefined {
  const raw = (socket.getPeerCertificate() as Partial<tls.PeerCertificate> | null)?.raw;
  return raw && raw.length > 0 ? new X509Certificate(raw) : undefined;
}

/** Where a service's TLS material is: PEM files. */
export interface TlsFiles {
  /** The cluster CA certificate(s); a file of several trusts each (for a CA rotation). */
  caFile: string;
  /** This service's certificate (first), optionally followed by intermediates. */
  certFile: string;
  /** The certificate's private key, unencrypted. */
  keyFile: string;
}

/** One checked, consistent set of TLS material. */
export interface Material {
  /** The PEM texts as read. */
  ca: string;
  cert: string;
  key: string;
  /** Whom the certificate names. */
  identity: Identity;
  /** When the certificate expires. */
  notAfter: Date;
  /** SHA-256 fingerprint of the certificate, as "AB:CD:…". */
  fingerprint: string;
}

/** The TLS material is not usable: names the file and what is wrong with it. */
export class TlsMaterialError extends Error {
  override name = "TlsMaterialError";
  readonly file: string;
  constructor(file: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.file = file;
  }
}

/** The lowest TLS version Conductor speaks. */
export const MIN_TLS_VERSION = "TLSv1.3";

/** How often, by default, TlsMaterial looks at its files, in milliseconds. */
export const DEFAULT_POLL_MS = 1000;

/**
 * A service's certificate, key and CA, read from files and reloaded when they change (rotation
 * without restart). Every `pollMs` it looks at the files' size, times and inode (so editors and
 * `mv` replacing them are seen); once a change has held still for one more look, it reads and
 * checks the three together. Only a whole good set replaces the current one: a half-written or
 * bad set is logged as a warning naming the file, once, and the current material kept.
 * A new set must name the same identity: a service does not change who it is while running.
 */
export class TlsMaterial {
  readonly files: TlsFiles;
  readonly #log: Logger;
  readonly #listeners = new Set<() => void>();
  readonly #timer: NodeJS.Timeout;
  #current: Material;
  #context: tls.SecureContext;
  /** The files' stat signature the current material was read at. */
  #loadedAt: string;
  /** A signature seen once, waiting to hold still. */
  #pending: string | undefined;
  /** The signature of a set that failed its checks (warned about once). */
  #failedAt: string | undefined;

  private constructor(files: TlsFiles, log: Logger, pollMs: number) {
    this.files = files;
    this.#log = log;
    this.#loadedAt = signature(files);
    this.#current = readMaterial(files);
    this.#context = tls.createSecureContext(contextOptions(this.#current));
    this.#timer = setInterval(() => this.#poll(), pollMs);
    this.#timer.unref(); // watching alone keeps no process alive
  }

  /**
   * Reads and checks the material and starts watching its files every `pollMs` (default 1000).
   * Throws TlsMaterialError naming the file when one is missing or unreadable, is not PEM, the
   * key does not match the certificate, the certificate is not signed by the CA, has expired,
   * or names no spiffe://conductor/<role>/<name> identity.
   */
  static load(files: TlsFiles, log: Logger = silentLogger, pollMs = DEFAULT_POLL_MS): TlsMaterial {
    if (!Number.isInteger(pollMs) || pollMs < 10 || pollMs > 60_000)
      throw new RangeError(`pollMs must be a whole number from 10 to 60000, got ${pollMs}`);
    return new TlsMaterial(files, log, pollMs);
  }

  /** The material in use now. */
  current(): Material {
    return this.#current;
  }

  /** A secure context of the current material (TLS 1.3 at least); a new one after each reload. */
  secureContext(): tls.SecureContext {
    return this.#context;
  }

  /** The current material as options of `tls.createSecureContext` / `server.setSecureContext`. */
  contextOptions(): tls.SecureContextOptions {
    return contextOptions(this.#current);
  }

  /** Calls `listener` after each successful reload; returns the function that stops that. */
  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /** Stops watching the files; the current material stays readable. */
  close(): void {
    clearInterval(this.#timer);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #poll(): void {
    const seen = signature(this.files);
    if (seen === this.#loadedAt || seen === this.#failedAt) {
      this.#pending = undefined;
      return;
    }
    if (seen !== this.#pending) {
      this.#pending = seen; // still changing, perhaps: look again next time
      return;
    }
    this.#pending = undefined;
    try {
      const next = readMaterial(this.files);
      const was = this.#current;
      if (next.identity.spiffeId !== was.identity.spiffeId)
        throw new TlsMaterialError(
          this.files.certFile,
          `${this.files.certFile} now names ${next.identity.spiffeId}, but this service runs as ${was.identity.spiffeId}: issue its certificate for the same name and role, or restart it to change who it is`,
        );
      this.#loadedAt = seen;
      this.#failedAt = undefined;
      if (next.ca === was.ca && next.cert === was.cert && next.key === was.key) return; // touched only
      this.#context = tls.createSecureContext(contextOptions(next));
      this.#current = next;
    } catch (e) {
      this.#failedAt = seen;
      this.#log.warn(
        `TLS material not reloaded, the current one is kept: ${(e as Error).message}`,
        {
          file: e instanceof TlsMaterialError ? e.file : undefined,
          error: e,
        },
      );
      return;
    }
    const { identity, fingerprint, notAfter } = this.#current;
    this.#log.info("TLS material reloaded", {
      identity: identity.spiffeId,
      fingerprint,
      not_after: notAfter.toISOString(),
    });
    for (const listener of [...this.#listeners]) {
      try {
        listener();
      } catch (e) {
        this.#log.error("a TLS material change listener failed", { error: e });
      }
    }
  }
}

/**
 * Keeps a TLS (or HTTP/2) server's certificate current: sets it from `material` now and after
 * each reload, so new connections get the new certificate. Returns the function that stops that.
 */
export function keepServerCurrent(server: tls.Server, material: TlsMaterial): () => void {
  server.setSecureContext(material.contextOptions());
  return material.onChange(() => server.setSecureContext(material.contextOptions()));
}

function contextOptions(m: Material): tls.SecureContextOptions {
  return { ca: m.ca, cert: m.cert, key: m.key, minVersion: MIN_TLS_VERSION };
}

/** The files' sizes, times and inodes, or why one cannot be looked at: changes when a file does. */
function signature(files: TlsFiles): string {
  return [files.caFile, files.certFile, files.keyFile]
    .map((f) => {
      try {
        const s = statSync(f, { bigint: true });
        return `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
      } catch (e) {
        return String((e as NodeJS.ErrnoException).code);
      }
    })
    .join("|");
}

/** Reads the three files and checks they make one usable set (see TlsMaterial.load). */
function readMaterial(files: TlsFiles): Material {
  const { caFile, certFile, keyFile } = files;
  const ca = readPem(caFile, "CA certificate");
  const cert = readPem(certFile, "certificate");
  const key = readPem(keyFile, "private key");
  const cas = certificates(ca, caFile, "CA certificate");
  if (!cas.some((c) => c.ca))
    throw new TlsMaterialError(
      caFile,
      `${caFile} holds no CA certificate (none has basicConstraints CA:TRUE): give the cluster CA's ca.crt`,
    );
  const leaf = certificates(cert, certFile, "certificate")[0]!;
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (e) {
    throw new TlsMaterialError(
      keyFile,
      `${keyFile} is not an unencrypted PEM private key (${(e as Error).message})`,
      { cause: e },
    );
  }
  if (!leaf.checkPrivateKey(privateKey))
    throw new TlsMaterialError(
      keyFile,
      `the key in ${keyFile} does not match the certificate in ${certFile}: they come from different issues (a rotation half done?); issue both again with "conductor certs issue"`,
    );
  const issuer = cas.find((c) => c.ca && leaf.checkIssued(c) && leaf.verify(c.publicKey));
  if (!issuer)
    throw new TlsMaterialError(
      certFile,
      `${certFile} is not signed by the CA in ${caFile}: issue it with that CA ("conductor certs issue --dir" the CA's folder), or give the CA that signed it`,
    );
  const identity = identityOf(leaf);
  if (!identity)
    throw new TlsMaterialError(
      certFile,
      `${certFile} names no Conductor identity: it needs exactly one URI SAN spiffe://conductor/<role>/<name>; issue it with "conductor certs issue"`,
    );
  const now = Date.now();
  for (const [c, file] of [
    [leaf, certFile],
    [issuer, caFile],
  ] as const) {
    if (c.validToDate.getTime() < now)
      throw new TlsMaterialError(
        file,
        `the certificate in ${file} (${c.subject.replaceAll("\n", ", ")}) expired on ${c.validToDate.toISOString()}: issue a new one`,
      );
  }
  return {
    ca,
    cert,
    key,
    identity,
    notAfter: leaf.validToDate,
    fingerprint: leaf.fingerprint256,
  };
}

function readPem(file: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === "ENOENT"
        ? "does not exist"
        : code === "EACCES"
          ? "cannot be read by this user (permission denied)"
          : code === "EISDIR"
            ? "is a folder, not a file"
            : `cannot be read (${(e as Error).message})`;
    throw new TlsMaterialError(file, `the ${what} file ${file} ${why}`, { cause: e });
  }
  if (!text.includes("-----BEGIN "))
    throw new TlsMaterialError(file, `the ${what} file ${file} is not PEM (no "-----BEGIN" line)`);
  return text;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Every certificate in a PEM text, in order; throws naming the file when there is none or one is bad. */
function certificates(pem: string, file: string, what: string): X509Certificate[] {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0)
    throw new TlsMaterialError(file, `the ${what} file ${file} holds no PEM certificate`);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (e) {
      throw new TlsMaterialError(
        file,
        `certificate ${i + 1} in ${file} cannot be parsed (${(e as Error).message}); is the file cut short?`,
        { cause: e },
      );
    }
  });
}
