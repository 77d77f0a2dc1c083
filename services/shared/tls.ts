// Mutual TLS material of a Conductor service: its certificate, key and the cluster CA, read from
// files, checked, and reloaded when the files change, so certificates rotate without a restart.
import { X509Certificate } from "node:crypto";
import type tls from "node:tls";
import { silentLogger, type Logger } from "./log.ts";
import { identityOf, type Identity } from "./spiffe.ts";
import {
  contextOptions,
  readMaterial,
  secureContextOf,
  signature,
  TlsMaterialError,
  type Material,
  type TlsFiles,
} from "./tls-files.ts";

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
export { MIN_TLS_VERSION, TlsMaterialError, type Material, type TlsFiles } from "./tls-files.ts";

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
    this.#context = secureContextOf(this.#current, files);
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
      this.#context = secureContextOf(next, this.files);
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
