// The process backend's model forwarder, one per agent (forwarder.ts), with real bubblewrap and
// socat, as an AgentHost running as root has it: each run reaches the model on 127.0.0.1:8080
// of its agent's network namespace, cannot reach the forwarder itself, and finds it there again
// whatever a run (or anyone) did to it.
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readlinkSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RuntimeBackend, SandboxHandle } from "../runtime.ts";
import { runScript } from "../../test/sandbox-script.ts";
import { createProcessBackend } from "./index.ts";

const UID = 61000 + (process.pid % 1000);

describe.runIf(process.getuid?.() === 0)("the process backend's model forwarder", () => {
  let dir: string;
  let backend: RuntimeBackend;
  const servers: net.Server[] = [];
  const agents: SandboxHandle[] = [];

  /** A model socket answering each connection with `model <name>: <first line it got>`. */
  const modelSocket = async (name: string) => {
    const socketPath = path.join(dir, `run-${name}`, "model.sock");
    mkdirSync(path.dirname(socketPath), { mode: 0o755 });
    const server = net.createServer((s) => {
      s.once("data", (d) => s.end(`model ${name}: ${d.toString().split("\n")[0]}\n`));
      s.on("error", () => s.destroy());
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    chmodSync(socketPath, 0o666);
    servers.push(server);
    return socketPath;
  };

  const agent = async (name: string) => {
    const ws = path.join(dir, `ws-${name}`);
    mkdirSync(ws);
    chownSync(ws, UID, UID);
    const model = await modelSocket(name);
    const h = await backend.create({
      ...{ nodeId: `fwd${process.pid}`, agentId: name, image: "", labels: {}, limits: {} },
      network: "none",
      mounts: [{ hostPath: ws }, { hostPath: path.dirname(model), readOnly: true }],
      env: { CONDUCTOR_MODEL_SOCKET: model },
      user: `${UID}:${UID}`,
    });
    await backend.start(h);
    agents.push(h);
    return { h, ws, model };
  };

  const run = (h: SandboxHandle, ws: string, script: string) => runScript(backend, h, ws, script);
  const ASK_MODEL = `echo "$ANTHROPIC_BASE_URL"; echo hello | socat -t 5 - TCP:127.0.0.1:8080`;
  /** The forwarder's processes (its bwrap and socat) serving `model`, from the host's view. */
  const forwarders = (model: string): number[] => {
    try {
      return execFileSync("pgrep", ["-f", `socat TCP-LISTEN.*${model}`], { encoding: "utf8" })
        .trim()
        .split("\n")
        .map(Number);
    } catch {
      return []; // pgrep: none
    }
  };

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), "conductor-forwarder-"));
    chmodSync(dir, 0o755);
    backend = createProcessBackend({ stateDir: path.join(dir, "state") });
  });

  afterAll(async () => {
    for (const h of agents) await backend.destroy(h);
    await backend.close();
    for (const s of servers) s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("serves each agent's model to its runs, in a namespace of the agent's own with only loopback", async () => {
    const a = await agent("a");
    const b = await agent("b");
    const seen = async (x: typeof a) =>
      run(
        x.h,
        x.ws,
        `${ASK_MODEL}; readlink /proc/self/ns/net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '`,
      );
    const [a1, a2, b1] = [await seen(a), await seen(a), await seen(b)];
    expect(a1.slice(0, 2)).toEqual(["http://127.0.0.1:8080", "model a: hello"]);
    expect(b1.slice(0, 2)).toEqual(["http://127.0.0.1:8080", "model b: hello"]);
    expect(a1[3]).toBe("lo");
    // One namespace for an agent's runs; another for the other agent; neither the host's.
    expect(a2[2]).toBe(a1[2]);
    expect(b1[2]).not.toBe(a1[2]);
    expect([a1[2], b1[2]]).not.toContain(readlinkSync("/proc/self/ns/net"));
  });

  it("keeps the forwarder out of a run's reach: no descriptor of it, not seen, not signalled", async () => {
    const a = await agent("c");
    const lines = await run(
      a.h,
      a.ws,
      [
        // Every process it can see that is not its own shell: its lifeline holder at most.
        `for d in /proc/[0-9]*; do [ "\${d#/proc/}" = $$ ] || cat $d/comm; done | grep -c socat || true`,
        `[ -e /proc/$$/fd/3 ] && echo fd-3-open || echo no-fd-3`,
        `for d in /proc/[0-9]*; do [ "\${d#/proc/}" = $$ ] || kill -9 \${d#/proc/} 2>/dev/null; done; echo killed-all`,
      ].join("; "),
    );
    expect(lines).toEqual(["0", "no-fd-3", "killed-all"]);
    expect(await run(a.h, a.ws, ASK_MODEL)).toEqual(["http://127.0.0.1:8080", "model c: hello"]);
  });

  it("ends a run whose forwarder dies under it, saying why; the next run gets a new one", async () => {
    const a = await agent("e");
    const x = await backend.exec(a.h, {
      argv: ["/bin/sh", "-c", `${ASK_MODEL}; exec sleep 60`],
      cwd: a.ws,
      env: {},
    });
    const lines: string[] = [];
    x.onStdoutLine((l) => lines.push(l));
    await expect.poll(() => lines, { timeout: 10_000 }).toContain("model e: hello");
    // The socat that listens (bwrap's, and so the namespace's, first process is its parent).
    const socat = Number(
      execFileSync("pgrep", ["-o", "-f", `^socat TCP-LISTEN.*${a.model}`], { encoding: "utf8" }),
    );
    process.kill(socat, "SIGKILL");
    const status = await x.exited;
    expect(status.code).not.toBe(0);
    expect(status.lost).toMatch(/model forwarder ended during the run/);
    expect(await run(a.h, a.ws, ASK_MODEL)).toEqual(["http://127.0.0.1:8080", "model e: hello"]);
  });

  it("ends at recover() what is left of a sandbox's runs and forwarder, found by bwrap's marker", async () => {
    const a = await agent("h");
    // The marker is bwrap's alone: the run's processes do not see it.
    expect(await run(a.h, a.ws, 'echo "${CONDUCTOR_SANDBOX:-unset}"')).toEqual(["unset"]);
    const x = await backend.exec(a.h, { argv: ["/bin/sleep", "60"], cwd: a.ws, env: {} });
    expect(forwarders(a.model).length).toBeGreaterThan(0);
    // As an AgentHost started again after one that died as this run started: another backend
    // on the same state folder re-adopts the sandbox.
    const again = createProcessBackend({ stateDir: path.join(dir, "state") });
    expect(await again.recover(a.h)).toEqual(a.h);
    expect((await x.exited).signal).toBe("SIGKILL");
    await expect.poll(() => forwarders(a.model), { timeout: 10_000 }).toEqual([]);
    await again.close();
  });

  it("leaves no forwarder behind when its agent is removed as a run starts", async () => {
    for (const name of ["f", "g"]) {
      const a = await agent(name);
      const started = backend.exec(a.h, { argv: ["/bin/true"], cwd: a.ws, env: {} }).then(
        (x) => x.exited,
        (e: Error) => expect(e.message).toMatch(/not running/),
      );
      await (name === "f" ? backend.destroy(a.h) : backend.stop(a.h, 0));
      await started;
      await expect.poll(() => forwarders(a.model), { timeout: 10_000 }).toEqual([]);
    }
  });

  it("starts the forwarder again when it has died, and ends it with its agent", async () => {
    const a = await agent("d");
    await run(a.h, a.ws, ASK_MODEL);
    const [pid] = forwarders(a.model);
    expect(pid).toBeGreaterThan(0);
    process.kill(pid!, "SIGKILL");
    await expect.poll(() => forwarders(a.model).includes(pid!), { timeout: 10_000 }).toBe(false);
    expect(await run(a.h, a.ws, ASK_MODEL)).toEqual(["http://127.0.0.1:8080", "model d: hello"]);
    await backend.stop(a.h, 1000);
    await expect.poll(() => forwarders(a.model), { timeout: 10_000 }).toEqual([]);
  });
});
