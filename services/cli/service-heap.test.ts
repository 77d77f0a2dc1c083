import { fork, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { startService } from "../../test/harness.ts";
import { SERVICE_NODE_FLAGS } from "./service-heap.ts";

const dir = mkdtempSync(path.join(tmpdir(), "service-heap-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Starts a program as the harness would, given its Node flags (none of ours) and its argv. */
type Launch = (node: string, flags: string[], argv: string[], options: object) => ChildProcess;
const plain: Launch = (node, flags, argv, options) => spawn(node, [...flags, ...argv], options);

/**
 * `node [flags] bin/conductor.js orchestrator` as a user starts it: the harness's own heap
 * flags taken out, `flags` put in their place, started by `launch`.
 */
async function orchestrator(
  name: string,
  o: { env?: Record<string, string>; flags?: string[]; launch?: Launch } = {},
) {
  const where = path.join(dir, name);
  const asUser = ((file: string, args: string[], options: object) =>
    (o.launch ?? plain)(
      file,
      o.flags ?? [],
      args.filter((a) => !SERVICE_NODE_FLAGS.includes(a)),
      options,
    )) as typeof spawn;
  return startService(
    "orchestrator",
    ["--socket-dir", path.join(where, "run"), "--data-dir", path.join(where, "data")],
    { CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1", ...o.env },
    undefined,
    asUser,
  );
}

/** The Node flags the process runs with now (its command line before the script). */
function nodeFlags(pid: number): string[] {
  const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  return argv.slice(
    1,
    argv.findIndex((a) => a.endsWith("conductor.js")),
  );
}

describe("the services' heap settings", () => {
  it("a service started without them runs with them, in the same process", async () => {
    const service = await orchestrator("plain");
    try {
      expect(nodeFlags(service.proc.pid!)).toEqual(SERVICE_NODE_FLAGS);
    } finally {
      await service.stop();
    }
    // The signal reached the service itself, which stopped cleanly.
    expect(service.proc.exitCode).toBe(0);
  });

  it("a Node given flags of its own runs as it is: an operator's heap flags win, a preload runs once", async () => {
    const preload = path.join(dir, "preload.cjs");
    const ran = path.join(dir, "preload-ran");
    writeFileSync(preload, `require("node:fs").appendFileSync(${JSON.stringify(ran)}, "ran\\n");`);
    const cases = [
      { name: "options", env: { NODE_OPTIONS: `--require ${preload}` } },
      { name: "underscores", flags: ["--max_semi_space_size=32", "--require", preload] },
    ];
    for (const c of cases) {
      rmSync(ran, { force: true });
      const service = await orchestrator(c.name, c);
      try {
        expect(nodeFlags(service.proc.pid!)).toEqual(c.flags ?? []);
        expect(readFileSync(ran, "utf8")).toBe("ran\n");
      } finally {
        await service.stop();
      }
    }
  });

  it("keeps a parent's IPC channel and an environment that is not UTF-8", async () => {
    const forked: Launch = (node, flags, [bin, ...args], options) =>
      fork(bin!, args, {
        ...options,
        execPath: node,
        execArgv: flags,
        stdio: ["ignore", "pipe", "pipe", "ipc"],
      });
    const service = await orchestrator("forked", { launch: forked });
    try {
      expect(nodeFlags(service.proc.pid!)).toEqual([]);
      expect(service.proc.connected).toBe(true);
    } finally {
      await service.stop();
    }
    // A value the shell sets byte for byte: Latin-1 "café".
    const latin1: Launch = (node, flags, argv, options) =>
      spawn(
        "/bin/sh",
        ["-c", `LATIN1=$(printf 'caf\\351') exec "$@"`, "sh", node, ...flags, ...argv],
        options,
      );
    const other = await orchestrator("latin1", { launch: latin1 });
    try {
      expect(nodeFlags(other.proc.pid!)).toEqual([]);
      const environ = readFileSync(`/proc/${other.proc.pid!}/environ`);
      expect(environ.includes(Buffer.from("LATIN1=caf\xe9\0", "latin1"))).toBe(true);
    } finally {
      await other.stop();
    }
  });
});
