// Certificates for mutual-TLS tests, made with openssl (Debian's `openssl` 3.0): a CA of the
// test's own, a server certificate for one DNS name and a client certificate, all P-256, valid a day.
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** PEM files under one folder: the CA, and a certificate and key for each side. */
export interface TestCerts {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** Makes a fresh CA in `dir` and signs a server certificate for `serverName` and a client's. */
export async function makeCerts(dir: string, serverName: string): Promise<TestCerts> {
  const file = (name: string) => path.join(dir, name);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await run("openssl", [
    ...["req", "-x509", ...ec, "-days", "1", "-subj", "/CN=conductor-test-ca"],
    ...["-keyout", file("ca.key"), "-out", file("ca.pem")],
  ]);
  const leaf = async (name: string, subject: string, extensions: string) => {
    writeFileSync(file(`${name}.ext`), extensions);
    await run("openssl", [
      ...["req", ...ec, "-subj", `/CN=${subject}`],
      ...["-keyout", file(`${name}.key`), "-out", file(`${name}.csr`)],
    ]);
    await run("openssl", [
      ...["x509", "-req", "-in", file(`${name}.csr`), "-days", "1"],
      ...["-CA", file("ca.pem"), "-CAkey", file("ca.key"), "-CAcreateserial"],
      ...["-extfile", file(`${name}.ext`), "-out", file(`${name}.pem`)],
    ]);
  };
  await leaf(
    "server",
    serverName,
    `subjectAltName=DNS:${serverName}\nextendedKeyUsage=serverAuth\n`,
  );
  await leaf("client", "conductor-test-client", "extendedKeyUsage=clientAuth\n");
  return {
    ca: file("ca.pem"),
    serverCert: file("server.pem"),
    serverKey: file("server.key"),
    clientCert: file("client.pem"),
    clientKey: file("client.key"),
  };
}
