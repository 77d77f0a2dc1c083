// `conductor certs init|issue`: the command line read, the work done by certs.ts, what it wrote said.
import path from "node:path";
import { bool, list, str, UsageError, type ParsedCommand } from "./args.ts";
import { initCa, issueCert } from "./certs.ts";

/** Runs `conductor certs init|issue`; returns the exit code. */
export async function runCertsCommand(
  p: ParsedCommand,
  out: (line: string) => void,
): Promise<number> {
  const [action, ...extra] = p.positionals;
  if ((action !== "init" && action !== "issue") || extra.length > 0)
    throw new UsageError(
      `expected "conductor certs init --dir DIR" or "conductor certs issue --dir DIR --name NAME --role ROLE"`,
    );
  const dir = str(p, "dir");
  if (!dir)
    throw new UsageError(
      `--dir is required: the folder of the CA and certificates, e.g. --dir /etc/conductor/tls`,
    );
  const daysText = str(p, "days");
  const days = daysText === undefined ? undefined : Number(daysText.trim() || NaN);
  if (days !== undefined && !Number.isInteger(days))
    throw new UsageError(`--days must be a whole number of days, got "${daysText}"`);
  const asJson = bool(p, "json");
  if (action === "init") {
    for (const flag of ["name", "role", "dns", "ip"])
      if (p.values[flag] !== undefined)
        throw new UsageError(`--${flag} is for "conductor certs issue"; init makes the CA alone`);
    const ca = await initCa(path.resolve(dir), days);
    if (asJson) out(JSON.stringify({ ca }));
    else {
      out(`wrote ${ca.cert} (the CA certificate: every service and client trusts it)`);
      out(`wrote ${ca.key} (the CA key, 0600: keep it secret, it signs every certificate)`);
      out(
        `valid until ${ca.notAfter.toISOString()}; next: conductor certs issue --dir ${dir} --name NAME --role ROLE`,
      );
    }
    return 0;
  }
  const name = str(p, "name");
  const role = str(p, "role");
  if (!name || !role)
    throw new UsageError(
      `--name and --role are required, e.g. conductor certs issue --dir ${dir} --name broker-1 --role broker`,
    );
  const issued = await issueCert({
    dir: path.resolve(dir),
    name,
    role,
    dns: list(p, "dns"),
    ips: list(p, "ip"),
    days,
  });
  if (asJson) out(JSON.stringify(issued));
  else {
    out(`wrote ${issued.cert} (${issued.replaced ? "replaced; " : ""}identity ${issued.spiffeId})`);
    out(`wrote ${issued.key} (its private key, 0600)`);
    const names = [...issued.dns, ...issued.ips];
    out(
      `valid until ${issued.notAfter.toISOString()}${names.length ? `; also for ${names.join(", ")}` : ""}`,
    );
  }
  return 0;
}
