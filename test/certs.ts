// Certificates for tests of mutual TLS: a CA and certificates made by the real `conductor certs`
// code, and the ones it will not make — expired, from another CA, naming no identity — made
// with openssl the honest way (`openssl ca` with explicit dates).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseCommandLine } from "../services/cli/args.ts";
import { runCertsCommand } from "../services/cli/certs-command.ts";
import { caPaths, leafExtensions } from "../services/cli/certs.ts";
import { COMMANDS } from "../services/cli/commands.ts";
import { openssl } from "../services/cli/openssl.ts";
import { spiffeId, type Role } from "../services/shared/spiffe.ts";
import type { TlsFiles } from "../services/shared/tls.ts";

/** A certificate to issue: `conductor certs issue`'s flags. */
export interface CertSpec {
  role: Role;
  name: string;
  dns?: string[];
  ips?: string[];
  days?: number;
}

/** A test CA's folder and the TLS files of what it issued. */
export interface TestCerts {
  dir: string;
  caFile: string;
  /** The files of `name`'s certificate, key and this CA. */
  files(name: string): TlsFiles;
  /** Issues (or re-issues: rotates) a certificate with `conductor certs issue`. */
  issue(spec: CertSpec): Promise<TlsFiles>;
}

/**
 * Runs `conductor certs ARGS --json` through the command's own parsing and code (in this
 * process) and returns what it printed, parsed. Throws what the command throws.
 */
export async function certsCli(args: string[]): Promise<Record<string, unknown>> {
  const parsed = parseCommandLine(["certs", ...args, "--json"], COMMANDS);
  if (!parsed) throw new Error("no command");
  const lines: string[] = [];
  await runCertsCommand(parsed, (l) => lines.push(l));
  return JSON.parse(lines.join("\n")) as Record<string, unknown>;
}

/** Makes a CA in `dir` with `conductor certs init` and issues each of `specs`. */
/** The environment that points a service at TLS files (tls.ca_file, cert_file, key_file). */
export function tlsEnv(f: TlsFiles): Record<string, string> {
  return {
    CONDUCTOR_TLS_CA_FILE: f.caFile,
    CONDUCTOR_TLS_CERT_FILE: f.certFile,
    CONDUCTOR_TLS_KEY_FILE: f.keyFile,
  };
}

export async function makeCerts(dir: string, specs: CertSpec[]): Promise<TestCerts> {
  await certsCli(["init", "--dir", dir]);
  const files = (name: string): TlsFiles => ({
    caFile: caPaths(dir).cert,
    certFile: path.join(dir, `${name}.crt`),
    keyFile: path.join(dir, `${name}.key`),
  });
  const issue = async (s: CertSpec) => {
    await certsCli(issueArgs(dir, s));
    return files(s.name);
  };
  for (const s of specs) await issue(s);
  return { dir, caFile: caPaths(dir).cert, files, issue };
}

/** `conductor certs issue`'s arguments for `spec`. */
export function issueArgs(dir: string, s: CertSpec): string[] {
  return [
    ...["issue", "--dir", dir, "--name", s.name, "--role", s.role],
    ...(s.dns ?? []).flatMap((d) => ["--dns", d]),
    ...(s.ips ?? []).flatMap((ip) => ["--ip", ip]),
    ...(s.days === undefined ? [] : ["--days", String(s.days)]),
  ];
}

/**
 * A certificate for `role`/`name` in `dir`, signed by the CA in `caDir` like one `certs issue`
 * makes, whose validity ended a day ago (it began two days ago).
 */
export async function expiredCert(
  dir: string,
  caDir: string,
  role: Role,
  name: string,
): Promise<TlsFiles> {
  const day = 86_400_000;
  return signWithCa(dir, caDir, name, {
    extensions: leafExtensions(spiffeId(role, name), [], ["127.0.0.1"]),
    notBefore: new Date(Date.now() - 2 * day),
    notAfter: new Date(Date.now() - day),
  });
}

/**
 * Another CA, in `dir`, and a certificate it signed for `role`/`name` (a valid-looking
 * Conductor identity): what a party that is not of the cluster would present.
 */
export async function foreignCa(
  dir: string,
  role: Role = "client",
  name = "intruder",
): Promise<TlsFiles> {
  const certs = await makeCerts(dir, [{ role, name, ips: ["127.0.0.1"] }]);
  return certs.files(name);
}

/**
 * A certificate in `dir` for `name` signed by the CA in `caDir` with exactly `extensions` (an
 * openssl extensions section) and validity: for the certificates `certs issue` refuses to make.
 */
export async function signWithCa(
  dir: string,
  caDir: string,
  name: string,
  o: { extensions: string; notBefore?: Date; notAfter?: Date },
): Promise<TlsFiles> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files: TlsFiles = {
    caFile: caPaths(caDir).cert,
    certFile: path.join(dir, `${name}.crt`),
    keyFile: path.join(dir, `${name}.key`),
  };
  const scratch = mkdtempSync(path.join(dir, ".sign-"));
  try {
    const key = await openssl([
      "genpkey",
      "-algorithm",
      "EC",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
    ]);
    writeFileSync(files.keyFile, key, { mode: 0o600, flag: "w" });
    const config = path.join(scratch, "ca.cnf");
    writeFileSync(path.join(scratch, "index.txt"), "");
    writeFileSync(config, caConfig(scratch, name));
    const extensions = path.join(scratch, "ext.cnf");
    writeFileSync(extensions, o.extensions);
    const csr = path.join(scratch, "req.csr");
    await openssl(["req", "-new", "-config", config, "-key", files.keyFile, "-out", csr]);
    const now = Date.now();
    await openssl([
      ...["ca", "-batch", "-notext", "-config", config, "-in", csr, "-out", files.certFile],
      ...["-cert", caPaths(caDir).cert, "-keyfile", caPaths(caDir).key, "-extfile", extensions],
      ...["-startdate", asn1Time(o.notBefore ?? new Date(now - 60_000))],
      ...["-enddate", asn1Time(o.notAfter ?? new Date(now + 86_400_000))],
    ]);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return files;
}

/** A minimal `openssl ca` configuration whose database lives in `scratch`. */
function caConfig(scratch: string, name: string): string {
  return `[ca]
default_ca = test_ca
[test_ca]
database = ${path.join(scratch, "index.txt")}
new_certs_dir = ${scratch}
rand_serial = yes
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ${name}
`;
}

/** A time as `openssl ca -startdate/-enddate` takes it: YYYYMMDDHHMMSSZ. */
function asn1Time(d: Date): string {
  return d
    .toISOString()
    .replace(/[-:T]/g, "")
    .replace(/\.\d+Z$/, "Z");
}
