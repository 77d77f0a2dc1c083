/** A `host:port` (IPv6 as `[addr]:port`), as communication.listen and --join take it. */
export function parseHostPort(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new Error(
      `"${value}" is not host:port (e.g. 0.0.0.0:7443, node1.example:7443 or [::1]:7443)`,
    );
  }
  return { host: (m[1] ?? m[2])!, port };
}
