// execProcess at its edges: out of file descriptors (the AgentHost shares its process with
// every service, so a failed start must be a failed run, never a crash), killed as bwrap sets
// up, its lifeline's end when the AgentHost dies, and descriptors the AgentHost inherited.
import { execFile, spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { startLifeline } from "../../services/agent-host/lifeline.ts";
import { execProcess, killMarked, markedPids } from "./exec.ts";
import { createProcessBackend } from "./index.ts";

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

describe("a sandboxed run ended at once as it starts (a refused lifeline)", () => {
  it("ends every time, whatever stage bwrap was at, and leaves nothing of it", async () => {
    // The lifeline is never armed: the AgentHost's holder is refused as each exec starts, and
    // the exec is killed with no grace while bwrap may still be setting up its namespaces.
    // Killing bwrap alone then left its namespace's init orphaned, holding the run's pipes: the
    // exec never ended (3 tries in 3, within 10 execs).
    const dir = mkdtempSync(path.join(tmpdir(), "exec-refused-"));
    chmodSync(dir, 0o755);
    const lifeline = await startLifeline(path.join(dir, "lifeline.sock"), undefined);
    chmodSync(lifeline.socketPath, 0o666);
    const stateDir = path.join(dir, "state");
    const backend = createProcessBackend({ stateDir });
    const marker = `CONDUCTOR_SANDBOX=${path.resolve(stateDir)}/refused.a${process.pid}`;
    try {
      const h = await backend.create({
        ...{ nodeId: "refused", agentId: `a${process.pid}`, image: "", labels: {}, limits: {} },
        network: "none",
        mounts: [{ hostPath: dir, readOnly: true }],
        env: { CONDUCTOR_RUN_LIFELINE: lifeline.socketPath },
        user: "61990:61990",
      });
      await backend.start(h);
      for (let i = 0; i < 30; i++) {
        const x = await backend.exec(h, { argv: ["/bin/true"], cwd: "/", env: {} });
        const ended = await Promise.race([
          x.exited.then(() => true),
          new Promise<false>((resolve) => setTimeout(() => resolve(false), 10_000).unref()),
        ]);
        expect(ended, `exec ${i} ended`).toBe(true);
      }
      // Nothing carrying this sandbox's marker is left (bwrap's children carry it too).
      expect(h.id).toBe(`refused.a${process.pid}`);
      expect(await markedPids(marker)).toEqual([]);
      await backend.destroy(h);
    } finally {
      await killMarked(marker, "SIGKILL"); // what a failure left
      await lifeline.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("descriptors the AgentHost inherited", () => {
  it("reach no program the process backend starts", () => {
    // A wrapper left fd 200 open on a private file (`exec 200<secret; conductor up`): without
    // close-on-exec it went on into every run, where an agent could take it (pidfd_getfd).
    const dir = mkdtempSync(path.join(tmpdir(), "exec-inherited-"));
    try {
      const secret = path.join(dir, "secret");
      writeFileSync(secret, "operator's\n", { mode: 0o600 });
      const look = `[ -e /proc/$$/fd/200 ] && echo open || echo closed`;
      const script = `
        import { spawnSync } from "node:child_process";
        import { createProcessBackend } from ${JSON.stringify(path.join(import.meta.dirname, "index.ts"))};
        const look = () => spawnSync("/bin/sh", ["-c", ${JSON.stringify(look)}], { encoding: "utf8" }).stdout.trim();
        const before = look();
        createProcessBackend({ stateDir: ${JSON.stringify(path.join(dir, "state"))} });
        console.log(JSON.stringify([before, look()]));
      `;
      const { stdout } = spawnSync(
        "/bin/bash", // dash redirects only descriptors 0-9
        [
          "-c",
          `exec 200<"$1"; exec "$2" --input-type=module -e "$3"`,
          "sh",
          secret,
          process.execPath,
          script,
        ],
        { stdio: ["ignore", "pipe", "inherit"], encoding: "utf8", timeout: 30_000 },
      );
      expect(JSON.parse(stdout)).toEqual(["open", "closed"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
