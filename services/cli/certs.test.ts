import { execFile, execFileSync } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { certsCli } from "../../test/certs.ts";
import { ROOT } from "../../test/harness.ts";
import { UsageError } from "./args.ts";
import { CertsError } from "./certs.ts";

const CLI = path.join(ROOT, "bin", "conductor.js");

let root: string;
let dirs = 0;
/** A folder path unique to this run (not made: the command makes it). */
const fresh = () => path.join(root, `d${++dirs}`);

beforeAll(() => {
  root = mkdtempSync(path.join(tmpdir(), "conductor-certs-"));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Runs the real `conductor` binary under `umask`; its exit code and output. */
function conductor(
  args: string[],
  umask = "022",
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      "sh",
      ["-c", `umask ${umask} && exec "$0" "$@"`, process.execPath, CLI, ...args],
      { cwd: root, env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" } },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

const openssl = (...args: string[]) => execFileSync("openssl", args, { encoding: "utf8" });
const mode = (file: string) => (statSync(file).mode & 0o777).toString(8);
const certOf = (file: string) => new X509Certificate(readFileSync(file));
const DAY = 86_400_000;

describe("conductor certs init and issue", () => {
  for (const umask of ["000", "077"]) {
    it(`make a CA and a certificate openssl verifies, keys 0600 (umask ${umask})`, async () => {
      const dir = fresh();
      const init = await conductor(["certs", "init", "--dir", dir], umask);
      expect(init.stderr).toBe("");
      expect(init.code).toBe(0);
      expect(init.stdout).toContain(`wrote ${dir}/ca.crt`);
      expect(init.stdout).toContain(`wrote ${dir}/ca.key`);
      const issue = await conductor(
        [
          ...["certs", "issue", "--dir", dir, "--name", "node-1", "--role", "agent-host"],
          ...["--dns", "node-1.test", "--dns", "localhost", "--ip", "127.0.0.1", "--ip", "::1"],
        ],
        umask,
      );
      expect(issue.stderr).toBe("");
      expect(issue.code).toBe(0);
      expect(issue.stdout).toContain(
        `wrote ${dir}/node-1.crt (identity spiffe://conductor/agent-host/node-1)`,
      );

      expect(readdirSync(dir).sort()).toEqual(["ca.crt", "ca.key", "node-1.crt", "node-1.key"]);
      expect(mode(dir)).toBe("700");
      expect(mode(path.join(dir, "ca.key"))).toBe("600");
      expect(mode(path.join(dir, "node-1.key"))).toBe("600");
      expect(mode(path.join(dir, "ca.crt"))).toBe("644");
      expect(mode(path.join(dir, "node-1.crt"))).toBe("644");

      const crt = path.join(dir, "node-1.crt");
      expect(openssl("x509", "-in", crt, "-noout", "-ext", "subjectAltName")).toContain(
        "URI:spiffe://conductor/agent-host/node-1, DNS:node-1.test, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1",
      );
      expect(openssl("verify", "-CAfile", path.join(dir, "ca.crt"), crt)).toBe(`${crt}: OK\n`);
      const leafExt = openssl(
        ...["x509", "-in", crt, "-noout", "-subject"],
        ...["-ext", "basicConstraints,keyUsage,extendedKeyUsage"],
      );
      expect(leafExt).toMatch(/subject=CN = node-1/);
      expect(leafExt).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
      expect(leafExt).toMatch(/Key Usage: critical\s+Digital Signature\n/);
      expect(leafExt).toMatch(
        /Extended Key Usage:\s+TLS Web Server Authentication, TLS Web Client Authentication/,
      );
      const caExt = openssl(
        ...["x509", "-in", path.join(dir, "ca.crt"), "-noout", "-subject"],
        ...["-ext", "basicConstraints,keyUsage"],
      );
      expect(caExt).toMatch(/subject=CN = Conductor CA/);
      expect(caExt).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
      expect(caExt).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);

      for (const key of ["ca.key", "node-1.key"]) {
        const k = createPrivateKey(readFileSync(path.join(dir, key)));
        expect(k.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
      }
      const leaf = certOf(crt);
      expect(leaf.validToDate.getTime() - leaf.validFromDate.getTime()).toBe(365 * DAY);
      const ca = certOf(path.join(dir, "ca.crt"));
      expect(ca.validToDate.getTime() - ca.validFromDate.getTime()).toBe(3650 * DAY);
      expect(leaf.serialNumber).not.toBe(ca.serialNumber);
    });
  }

  it("--json prints what it wrote; --days sets the lifetime", async () => {
    const dir = fresh();
    const { ca } = (await certsCli(["init", "--dir", dir, "--days", "30"])) as {
      ca: Record<string, unknown>;
    };
    expect(ca).toMatchObject({ cert: path.join(dir, "ca.crt"), key: path.join(dir, "ca.key") });
    expect(ca["fingerprint"]).toBe(certOf(path.join(dir, "ca.crt")).fingerprint256);
    const issued = await certsCli([
      "issue",
      "--dir",
      dir,
      "--name",
      "b.1_x",
      "--role",
      "broker",
      "--days",
      "7",
    ]);
    expect(issued).toMatchObject({
      cert: path.join(dir, "b.1_x.crt"),
      key: path.join(dir, "b.1_x.key"),
      spiffeId: "spiffe://conductor/broker/b.1_x",
      role: "broker",
      name: "b.1_x",
      dns: [],
      ips: [],
      replaced: false,
    });
    const leaf = certOf(path.join(dir, "b.1_x.crt"));
    expect(new Date(issued["notAfter"] as string)).toEqual(leaf.validToDate);
    expect(leaf.validToDate.getTime() - leaf.validFromDate.getTime()).toBe(7 * DAY);
  });

  it("re-issuing a name replaces its key and certificate, leaving nothing else behind", async () => {
    const dir = fresh();
    await certsCli(["init", "--dir", dir]);
    const args = ["issue", "--dir", dir, "--name", "orch", "--role", "orchestrator"];
    const first = await certsCli(args);
    const firstKey = readFileSync(path.join(dir, "orch.key"), "utf8");
    const second = await certsCli([...args, "--dns", "orch.test"]);
    expect(second["replaced"]).toBe(true);
    expect(second["fingerprint"]).not.toBe(first["fingerprint"]);
    expect(readFileSync(path.join(dir, "orch.key"), "utf8")).not.toBe(firstKey);
    expect(certOf(path.join(dir, "orch.crt")).subjectAltName).toBe(
      "URI:spiffe://conductor/orchestrator/orch, DNS:orch.test",
    );
    expect(mode(path.join(dir, "orch.key"))).toBe("600");
    expect(readdirSync(dir).sort()).toEqual(["ca.crt", "ca.key", "orch.crt", "orch.key"]);
  });

  it("re-issuing a name for another role is refused, and the first role's key stays", async () => {
    const dir = fresh();
    await certsCli(["init", "--dir", dir]);
    await certsCli(["issue", "--dir", dir, "--name", "node-a", "--role", "agent-host"]);
    const key = readFileSync(path.join(dir, "node-a.key"), "utf8");
    const other = certsCli(["issue", "--dir", dir, "--name", "node-a", "--role", "client"]);
    await expect(other).rejects.toThrow(UsageError);
    await expect(other).rejects.toThrow(
      /holds spiffe:\/\/conductor\/agent-host\/node-a; a client certificate named "node-a" would replace that agent-host's key/,
    );
    expect(readFileSync(path.join(dir, "node-a.key"), "utf8")).toBe(key);
  });

  it("init refuses a folder that has a CA, and changes nothing", async () => {
    const dir = fresh();
    await certsCli(["init", "--dir", dir]);
    const before = readFileSync(path.join(dir, "ca.key"), "utf8");
    await expect(certsCli(["init", "--dir", dir])).rejects.toThrow(CertsError);
    const again = await conductor(["certs", "init", "--dir", dir]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`conductor certs: ${dir}/ca.crt already exists`);
    expect(again.stderr).toContain("move ca.crt and ca.key away first");
    expect(readFileSync(path.join(dir, "ca.key"), "utf8")).toBe(before);
    expect(readdirSync(dir).sort()).toEqual(["ca.crt", "ca.key"]);
  });

  it("issue without a CA says how to make one (exit 1)", async () => {
    const dir = fresh();
    const r = await conductor(["certs", "issue", "--dir", dir, "--name", "a", "--role", "client"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /no CA in .* \(.*ca\.crt is missing\): make one with "conductor certs init --dir/,
    );
  });

  it("a --dir that is a file is refused", async () => {
    const file = path.join(root, "a-file");
    writeFileSync(file, "");
    await expect(certsCli(["init", "--dir", file])).rejects.toThrow(`${file} is not a folder`);
    await expect(certsCli(["init", "--dir", path.join(file, "x")])).rejects.toThrow(
      /is not a folder \(a file, or under one\)/,
    );
  });

  it("a CA file that is not a certificate is reported as such", async () => {
    const dir = fresh();
    await certsCli(["init", "--dir", dir]);
    writeFileSync(path.join(dir, "ca.crt"), "garbage\n");
    const r = await conductor(["certs", "issue", "--dir", dir, "--name", "a", "--role", "client"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${dir}/ca.crt is not a PEM certificate`);
  });
});

describe("conductor certs refuses bad input (a usage error: exit code 2)", () => {
  let dir: string;
  beforeAll(async () => {
    dir = fresh();
    await certsCli(["init", "--dir", dir, "--days", "100"]);
  });
  const issue = (...extra: string[]) => ["issue", "--dir", "DIR", ...extra];
  const cases: [string, string[], RegExp][] = [
    ["no action", ["--dir", "DIR"], /expected "conductor certs init --dir DIR" or/],
    ["an unknown action", ["renew", "--dir", "DIR"], /expected "conductor certs init/],
    ["no --dir", ["init"], /--dir is required/],
    ["no --name", issue("--role", "broker"), /--name and --role are required/],
    [
      "a bad name",
      issue("--name", "a/b", "--role", "broker"),
      /--name "a\/b" is not a valid name: use 1–63 letters/,
    ],
    ["a name too long", issue("--name", "a".repeat(64), "--role", "broker"), /is not a valid name/],
    [
      "the CA's name",
      issue("--name", "CA", "--role", "broker"),
      /--name "CA" is taken: ca.crt and ca.key are the CA's files/,
    ],
    [
      "a bad role",
      issue("--name", "a", "--role", "admin"),
      /--role "admin" is not a role: use one of orchestrator, agent-host, broker, client/,
    ],
    [
      "a bad IP",
      issue("--name", "a", "--role", "broker", "--ip", "10.0.0.300"),
      /--ip "10.0.0.300" is not an IP address/,
    ],
    [
      "an IPv6 zone",
      issue("--name", "a", "--role", "broker", "--ip", "fe80::1%eth0"),
      /--ip "fe80::1%eth0": a certificate holds no zone/,
    ],
    [
      "a bad DNS name",
      issue("--name", "a", "--role", "broker", "--dns", "a b"),
      /--dns "a b" is not a DNS name/,
    ],
    [
      "DNS config syntax",
      issue("--name", "a", "--role", "broker", "--dns", "x, URI:spiffe://conductor/orchestrator/o"),
      /is not a DNS name/,
    ],
    [
      "no days",
      issue("--name", "a", "--role", "broker", "--days", "0"),
      /--days must be a whole number from 1 to 36500, got 0/,
    ],
    [
      "days not a number",
      issue("--name", "a", "--role", "broker", "--days", "1y"),
      /--days must be a whole number of days, got "1y"/,
    ],
    [
      "days past the CA",
      issue("--name", "a", "--role", "broker", "--days", "365"),
      /--days 365 would outlive the CA, which expires on .*: give --days 99 or fewer/,
    ],
    [
      "--name on init",
      ["init", "--dir", "DIR2", "--name", "x"],
      /--name is for "conductor certs issue"/,
    ],
    [
      "an unknown flag",
      issue("--name", "a", "--role", "broker", "--san", "x"),
      /Unknown option '--san'.*conductor help certs/,
    ],
  ];
  for (const [what, args, message] of cases) {
    it(what, async () => {
      const argv = args.map((a) => (a === "DIR" ? dir : a === "DIR2" ? fresh() : a));
      const failure = certsCli(argv);
      await expect(failure).rejects.toThrow(UsageError);
      await expect(failure).rejects.toThrow(message);
      expect(readdirSync(dir).sort()).toEqual(["ca.crt", "ca.key"]); // nothing written
    });
  }

  it("a CA that expires within a day issues nothing", async () => {
    const short = fresh();
    await certsCli(["init", "--dir", short, "--days", "1"]);
    const failure = certsCli([
      "issue",
      "--dir",
      short,
      "--name",
      "a",
      "--role",
      "client",
      "--days",
      "1",
    ]);
    await expect(failure).rejects.toThrow(CertsError);
    await expect(failure).rejects.toThrow(/expires on .*, within a day: make a new CA/);
  });

  it("the binary exits 2 with the message on stderr", async () => {
    const bad = await conductor(["certs", "issue", "--dir", dir, "--name", "a", "--role", "x"]);
    expect(bad).toMatchObject({ code: 2, stdout: "" });
    expect(bad.stderr).toMatch(/^conductor certs: --role "x" is not a role/);
    const unknown = await conductor(["certs", "init", "--dir", dir, "--force"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^conductor: Unknown option '--force'/);
  });
});

describe("conductor help", () => {
  it("lists certs and its flags", async () => {
    const overview = await conductor(["--help"]);
    expect(overview.stdout).toMatch(/Set up mutual TLS.*\n\s+certs\s+make the cluster's CA/);
    const help = await conductor(["help", "certs"]);
    expect(help.code).toBe(0);
    for (const flag of [
      "--dir DIR",
      "--name NAME",
      "--role ROLE",
      "--dns NAME",
      "--ip ADDR",
      "--days N",
      "--json",
    ])
      expect(help.stdout).toContain(flag);
  });
});
