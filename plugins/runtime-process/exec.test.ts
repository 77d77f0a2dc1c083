// execProcess when the process is out of file descriptors: the AgentHost shares its process
// with every service (`conductor up`), so a failed start must be a failed run, never a crash.
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

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
