// execProcess when the process is out of file descriptors: the AgentHost shares its process
// with every service (`conductor up`), so a failed start must be a failed run, never a crash.
import { execFile, spawn, spawnSync } from "node:child_process";
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

describe("a sandboxed run's lifeline pipe (index.ts SANDBOX_LAUNCHER)", () => {
  it("ends the run, and all it started, when the process that started it dies", async () => {
    // The AgentHost stands apart here, a process of its own, and there is no bwrap (whose
    // --die-with-parent would end the run too): only the pipe's end can end it.
    const tag = `1000.${process.pid}${Math.floor(Math.random() * 1e6)}`;
    const program = `[ -e /proc/$$/fd/4 ] && echo fd-4-open; sleep ${tag} & echo up; wait`;
    const script = `
      import { execProcess } from ${JSON.stringify(EXEC)};
      import { SANDBOX_LAUNCHER } from ${JSON.stringify(path.join(import.meta.dirname, "index.ts"))};
      const argv = ["/bin/sh", "-c", SANDBOX_LAUNCHER, "conductor-run", "", "pipe", "", "/bin/sh", "-c", ${JSON.stringify(program)}];
      const x = execProcess({ argv, cwd: "/", env: { PATH: "/usr/bin:/bin" } }, { sandboxed: true, lifelinePipe: true });
      x.onStdoutLine((l) => console.log(l));
      setInterval(() => undefined, 1000);
    `;
    const host = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    try {
      let out = "";
      host.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
      await expect.poll(() => out.split("\n"), { timeout: 20_000 }).toContain("up");
      expect(out.split("\n")).not.toContain("fd-4-open");
      expect(sleeping(tag)).toBe(true);
      host.kill("SIGKILL");
      await expect.poll(() => sleeping(tag), { timeout: 10_000 }).toBe(false);
    } finally {
      host.kill("SIGKILL");
      spawnSync("pkill", ["-KILL", "-f", `sleep ${tag}`]);
    }
  });
});

/** Whether a `sleep TAG` process is alive. */
function sleeping(tag: string): boolean {
  return spawnSync("pgrep", ["-f", `^sleep ${tag}$`]).status === 0;
}
