// execProcess when the process is out of file descriptors: the AgentHost shares its process
// with every service (`conductor up`), so a failed start must be a failed run, never a crash.
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { execProcess } from "./exec.ts";

const EXEC = path.join(import.meta.dirname, "exec.ts");

describe("execProcess out of file descriptors", () => {
  it("reports the failed start as the exec's outcome, and the process lives on", async () => {
    // Fill every descriptor the child may have, then start a program.
    const script = `
      import { openSync } from "node:fs";
      import { execProcess } from ${JSON.stringify(EXEC)};
      const held = [];
      try { for (;;) held.push(openSync("/dev/null", "r")); } catch {}
      const x = execProcess({ argv: ["true"], cwd: "/", env: {} }, { sandboxed: true });
      const status = await x.exited;
      console.log(JSON.stringify({ code: status.code, error: status.spawnError?.code ?? status.spawnError?.message }));
    `;
    const { stdout } = await promisify(execFile)(
      "prlimit",
      ["--nofile=64", process.execPath, "--input-type=module", "-e", script],
      { timeout: 30_000 },
    );
    expect(JSON.parse(stdout)).toEqual({ code: null, error: "EMFILE" });
  });
});

describe("execProcess, sandboxed, killed before its sandbox started the program", () => {
  it("ends the program once it is there, not after the grace period", async () => {
    // Stands in for bwrap still setting up its namespaces: the program comes at the depth bwrap
    // gives it (below bwrap's init) only after a while, and nothing is there to TERM when the
    // kill comes. (Each shell ends with `exit`, so none execs its last command in its place.)
    const program = `sh -c "echo started; sleep 1; echo late"; exit`;
    const argv = ["sh", "-c", `sleep 0.3; sh -c '${program}'; exit`];
    const x = execProcess({ argv, cwd: "/", env: {} }, { sandboxed: true });
    const lines: string[] = [];
    x.onStdoutLine((l) => lines.push(l));
    const t0 = performance.now();
    await x.kill(10_000);
    expect(performance.now() - t0).toBeLessThan(5_000);
    expect(lines).not.toContain("late");
  });
});
