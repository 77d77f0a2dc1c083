// `conductor certs`: the cluster's CA and the certificates of its services and clients, made by
// the system's openssl. A certificate names its holder as spiffe://conductor/<role>/<name>.
import { randomBytes, X509Certificate } from "node:crypto";
import { existsSync, linkSync, readFileSync, renameSync, rmSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import {
  identityOf,
  isRole,
  nameProblem,
  NAME_PATTERN,
  ROLES,
  spiffeId,
  type Identity,
} from "../shared/spiffe.ts";
import { UsageError } from "./args.ts";
import { CERT_MODE, inScratch, KEY_MODE, writeNew } from "./cert-files.ts";
import { openssl } from "./openssl.ts";

/** Default lifetimes, in days: the CA's, and a certificate's (rotate them yearly). */
export const CA_DAYS = 3650;
export const CERT_DAYS = 365;
const MAX_DAYS = 36500;

/** The CA's files in a certificate folder. */
export function caPaths(dir: string): { cert: string; key: string } {
  return { cert: path.join(dir, "ca.crt"), key: path.join(dir, "ca.key") };
}

/** A certificate and key `certs` wrote, and what the certificate says. */
export interface Written {
  cert: string;
  key: string;
  notAfter: Date;
  /** SHA-256 fingerprint, "AB:CD:…". */
  fingerprint: string;
}

/** A party's certificate `certs issue` wrote. */
export interface Issued extends Written {
  spiffeId: string;
  role: string;
  name: string;
  dns: string[];
  ips: string[];
  /** Whether it replaced an earlier certificate of the same name (a rotation). */
  replaced: boolean;
}

/** What `certs issue` is asked for; checked as a command line is (UsageError). */
export interface IssueOptions {
  dir: string;
  name: string;
  role: string;
  dns?: string[];
  ips?: string[];
  /** Default CERT_DAYS. */
  days?: number;
}

/** The folder already has a CA, or has none to issue with, or its files are not usable. */
export class CertsError extends Error {
  override name = "CertsError";
}

/**
 * Makes the cluster CA in `dir` (made 0700 if missing): ca.key, an EC P-256 key (0600), and
 * ca.crt, self-signed "CN=Conductor CA", CA:TRUE (critical, path length 0: it signs no other
 * CA), keyUsage keyCertSign, cRLSign (critical). Throws CertsError when `dir` has a CA already.
 */
export async function initCa(dir: string, days = CA_DAYS): Promise<Written> {
  checkDays(days);
  const ca = caPaths(dir);
  const exists = (f: string) =>
    new CertsError(
      `${f} already exists: ${dir} has a CA, and making another would leave every certificate it signed untrusted. Issue certificates with it ("conductor certs issue --dir ${dir}"); to start over, move ca.crt and ca.key away first`,
    );
  for (const f of [ca.cert, ca.key]) if (existsSync(f)) throw exists(f);
  return inScratch(dir, async (scratch) => {
    const key = path.join(scratch, "ca.key");
    writeNew(key, await newKey(), KEY_MODE);
    const config = path.join(scratch, "ca.cnf");
    writeNew(config, CA_CONFIG, KEY_MODE);
    const pem = await openssl([
      ...["req", "-new", "-x509", "-config", config, "-key", key, "-sha256"],
      ...["-days", String(days), "-set_serial", serial()],
    ]);
    const cert = path.join(scratch, "ca.crt");
    writeNew(cert, pem, CERT_MODE);
    // link, not rename: it fails rather than replace a CA another command just made.
    for (const [from, to] of [
      [key, ca.key],
      [cert, ca.cert],
    ] as const) {
      try {
        linkSync(from, to);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        if (to === ca.cert) rmSync(ca.key); // ours, linked a moment ago
        throw exists(to);
      }
    }
    return { ...ca, ...described(pem) };
  });
}

/** The identity in the certificate at `file`, if there is a readable one. */
function heldIdentity(file: string): Identity | undefined {
  try {
    return identityOf(new X509Certificate(readFileSync(file)));
  } catch {
    return undefined; // none, or not a certificate: replaced as before
  }
}

/**
 * Issues `name`'s certificate with the CA in `dir`: NAME.key (EC P-256, 0600) and NAME.crt
 * (0644), CN=NAME, CA:FALSE, keyUsage digitalSignature, extendedKeyUsage serverAuth and
 * clientAuth, SAN URI:spiffe://conductor/ROLE/NAME plus every DNS name and IP address given.
 * An existing NAME is replaced atomically (each file written aside, then renamed over): that is
 * a rotation. Throws UsageError for a bad name, role, DNS name, address or days, CertsError
 * when `dir` has no CA.
 */
export async function issueCert(o: IssueOptions): Promise<Issued> {
  const { dir, name, role } = o;
  const days = o.days ?? CERT_DAYS;
  const dns = o.dns ?? [];
  const ips = o.ips ?? [];
  checkDays(days);
  const id = checkIdentity(role, name);
  for (const d of dns) if (!isDnsName(d)) throw new UsageError(dnsProblem(d));
  for (const ip of ips) {
    if (net.isIP(ip) === 0)
      throw new UsageError(`--ip "${ip}" is not an IP address, e.g. 10.0.0.5 or fd00::5`);
    if (ip.includes("%"))
      throw new UsageError(
        `--ip "${ip}": a certificate holds no zone (%…); give the address alone`,
      );
  }
  const ca = caPaths(dir);
  const caCert = readCa(dir);
  const ends = Date.now() + days * 86_400_000;
  if (ends > caCert.validToDate.getTime()) {
    const until = caCert.validToDate.toISOString();
    const left = Math.floor((caCert.validToDate.getTime() - Date.now()) / 86_400_000);
    if (left < 1)
      throw new CertsError(
        `the CA in ${dir} expires on ${until}, within a day: make a new CA in another folder and issue every certificate again with it`,
      );
    throw new UsageError(
      `--days ${days} would outlive the CA, which expires on ${until}: give --days ${left} or fewer, or make a new CA`,
    );
  }
  const files = { cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
  const replaced = existsSync(files.cert) || existsSync(files.key);
  const held = heldIdentity(files.cert);
  if (held && held.name === name && held.role !== role) {
    throw new UsageError(
      `${files.cert} holds ${held.spiffeId}; a ${role} certificate named "${name}" would replace that ${held.role}'s key: give it another --name (or remove ${name}.crt and ${name}.key first)`,
    );
  }
  return inScratch(dir, async (scratch) => {
    const key = path.join(scratch, "key.pem");
    writeNew(key, await newKey(), KEY_MODE);
    const reqConfig = path.join(scratch, "req.cnf");
    writeNew(reqConfig, `[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = ${name}\n`, 0o600);
    const csr = await openssl(["req", "-new", "-config", reqConfig, "-key", key]);
    const extensions = path.join(scratch, "ext.cnf");
    writeNew(extensions, leafExtensions(id, dns, ips), 0o600);
    const pem = await openssl(
      [
        ...["x509", "-req", "-CA", ca.cert, "-CAkey", ca.key, "-extfile", extensions, "-sha256"],
        ...["-days", String(days), "-set_serial", serial()],
      ],
      csr,
    );
    const cert = path.join(scratch, "cert.pem");
    writeNew(cert, pem, CERT_MODE);
    // Key first: a reader (TlsMaterial) that sees the new key with the old certificate finds
    // them mismatched and keeps what it had until the certificate follows.
    renameSync(key, files.key);
    renameSync(cert, files.cert);
    return { ...files, ...described(pem), spiffeId: id, role, name, dns, ips, replaced };
  });
}

/**
 * The extensions (an openssl config's default section) of a party's certificate. The values
 * must be checked first (checkIdentity, isDnsName, net.isIP): they are written as they are.
 */
export function leafExtensions(spiffe: string, dns: string[], ips: string[]): string {
  const san = [`URI:${spiffe}`, ...dns.map((d) => `DNS:${d}`), ...ips.map((ip) => `IP:${ip}`)];
  return [
    "basicConstraints = critical, CA:FALSE",
    "keyUsage = critical, digitalSignature",
    "extendedKeyUsage = serverAuth, clientAuth",
    `subjectAltName = ${san.join(", ")}`,
    "subjectKeyIdentifier = hash",
    "authorityKeyIdentifier = keyid, issuer",
    "",
  ].join("\n");
}

/** The SPIFFE ID of a valid role and name; UsageError saying what to give otherwise. */
export function checkIdentity(role: string, name: string): string {
  if (!isRole(role))
    throw new UsageError(`--role "${role}" is not a role: use one of ${ROLES.join(", ")}`);
  if (!NAME_PATTERN.test(name)) throw new UsageError(`--name ${nameProblem(name)}`);
  if (name.toLowerCase() === "ca")
    throw new UsageError(`--name "${name}" is taken: ca.crt and ca.key are the CA's files`);
  return spiffeId(role, name);
}

/** Whether `s` is a DNS name a certificate may hold: labels of letters, digits and "-"; "*." first at most. */
export function isDnsName(s: string): boolean {
  const label = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
  const labels = s.replace(/^\*\./, "").split(".");
  return s.length <= 253 && labels.every((l) => label.test(l));
}

function dnsProblem(d: string): string {
  return `--dns "${d}" is not a DNS name: dot-separated labels of letters, digits and "-" (e.g. broker-1.internal), at most 253 characters`;
}

/** The CA certificate of `dir`; CertsError saying how to make one when it is missing. */
function readCa(dir: string): X509Certificate {
  const ca = caPaths(dir);
  for (const f of [ca.cert, ca.key])
    if (!existsSync(f))
      throw new CertsError(
        `no CA in ${dir} (${f} is missing): make one with "conductor certs init --dir ${dir}", or give --dir the folder that has ca.crt and ca.key`,
      );
  try {
    return new X509Certificate(readFileSync(ca.cert));
  } catch (e) {
    throw new CertsError(`${ca.cert} is not a PEM certificate: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

function checkDays(days: number) {
  if (!Number.isInteger(days) || days < 1 || days > MAX_DAYS)
    throw new UsageError(`--days must be a whole number from 1 to ${MAX_DAYS}, got ${days}`);
}

const CA_CONFIG = `[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = Conductor CA
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
`;

/** A new EC P-256 private key, PEM (PKCS #8), from openssl's standard output. */
function newKey(): Promise<string> {
  return openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
}

/** A random positive 128-bit serial number, as openssl's -set_serial takes it. */
function serial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40;
  return `0x${bytes.toString("hex")}`;
}

function described(pem: string): { notAfter: Date; fingerprint: string } {
  const c = new X509Certificate(pem);
  return { notAfter: c.validToDate, fingerprint: c.fingerprint256 };
}
