// A service's TLS material as files: read, checked as one set, and watched for changes.
import { createPrivateKey, X509Certificate, type KeyObject } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import tls from "node:tls";
import { identityOf, type Identity } from "./spiffe.ts";

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

/** The options of a secure context of `m`: its CA, certificate and key, TLS 1.3 at least. */
export function contextOptions(m: Material): tls.SecureContextOptions {
  return { ca: m.ca, cert: m.cert, key: m.key, minVersion: MIN_TLS_VERSION };
}

/**
 * A secure context of `m`; TlsMaterialError naming the certificate when Node's TLS will not
 * take the set (readMaterial checks all it can first).
 */
export function secureContextOf(m: Material, files: TlsFiles): tls.SecureContext {
  try {
    return tls.createSecureContext(contextOptions(m));
  } catch (e) {
    throw new TlsMaterialError(
      files.certFile,
      `${files.certFile} and ${files.keyFile} cannot be used for TLS: ${(e as Error).message}`,
      { cause: e },
    );
  }
}

/**
 * The files' sizes, times and inodes, or why one cannot be looked at: it changes when a file is
 * written, replaced (editors, `mv`) or removed.
 */
export function signature(files: TlsFiles): string {
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

/**
 * Reads the three files and checks they make one usable set; throws TlsMaterialError naming the
 * file when one is missing or unreadable, is not PEM, the key does not match the certificate,
 * the certificate is not signed by a CA of the CA file, it or its CA has expired, or it names no
 * spiffe://conductor/<role>/<name> identity.
 */
export function readMaterial(files: TlsFiles): Material {
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
