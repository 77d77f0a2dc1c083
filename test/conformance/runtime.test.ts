/**
 * One conformance suite for every runtime backend, run against the real engines: the
 * process backend, Docker and Podman (start them with deploy/engines/start-engines.sh and
 * build the image with deploy/agent-image/build-offline.sh). Limit and isolation checks
 * are skipped by the backend's fingerprint capabilities. Every sandbox carries this run's
 * session label; afterAll destroys them and proves none is left.
 *
 * Env: CONDUCTOR_TEST_IMAGE (default conductor-agent:dev), CONDUCTOR_TEST_RUNTIMES
 * (default "process,docker,podman"), DOCKER_HOST, CONDUCTOR_TEST_PODMAN_SOCKET.
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDockerBackend, socketFromDockerHost } from "../../plugins/runtime-docker/index.ts";
import { createPodmanBackend, podmanSocketPath } from "../../plugins/runtime-podman/index.ts";
import { createProcessBackend } from "../../plugins/runtime-process/index.ts";
import { markedPids } from "../../plugins/runtime-process/exec.ts";
import { MAX_LINE_BYTES } from "../../plugins/lines.ts";
import { startLifeline } from "../../services/agent-host/lifeline.ts";
import { LABEL_AGENT, LABEL_NODE } from "../../plugins/runtime.ts";
import type {
  Fingerprint,
  RuntimeBackend,
  SandboxHandle,
  SandboxSpec,
} from "../../plugins/runtime.ts";

const IMAGE = process.env["CONDUCTOR_TEST_IMAGE"] ?? "conductor-agent:dev";
const WANTED = (process.env["CONDUCTOR_TEST_RUNTIMES"] ?? "process,docker,podman").split(",");
const SESSION_LABEL = "dev.conductor.test-session";
const SESSION = randomUUID();
const NODE = "conformance";
const USER = "1000:1000";
// Podman on this kind of machine cannot start a container without explicit ulimits;
// the AgentHost passes runtime.ulimits the same way.
const ULIMITS = { nofile: 1024, nproc: 4096 };
const DOCKER_SOCKET = socketFromDockerHost(process.env["DOCKER_HOST"]) ?? "/var/run/docker.sock";
const PODMAN_SOCKET = podmanSocketPath({
  ...(process.env["CONDUCTOR_TEST_PODMAN_SOCKET"]
    ? { socketPath: process.env["CONDUCTOR_TEST_PODMAN_SOCKET"] }
    : {}),
  ...(process.getuid ? { uid: process.getuid() } : {}),
  ...(process.env["XDG_RUNTIME_DIR"] ? { xdgRuntimeDir: process.env["XDG_RUNTIME_DIR"] } : {}),
});
const stateDir = mkdtempSync(path.join(tmpdir(), "conformance-state-"));
afterAll(() => rmSync(stateDir, { recursive: true, force: true }));

interface Target {
  name: string;
  make(): RuntimeBackend;
  /** A container engine: its CLI (to kill a container from outside) and a dead socket. */
  engine?: {
    cli: string[];
    unreachable(): RuntimeBackend;
    startHint: RegExp;
    /** The backend on another socket that leads to the same engine. */
    through(socketPath: string): RuntimeBackend;
    socketPath: string;
    /** The path of the call that waits for a container's end. */
    waitPath(id: string): string;
  };
}

const TARGETS: Target[] = [
  { name: "process", make: () => createProcessBackend({ stateDir }) },
  {
    name: "docker",
    make: () => createDockerBackend({ socketPath: DOCKER_SOCKET }),
    engine: {
      cli: ["docker", "-H", `unix://${DOCKER_SOCKET}`],
      unreachable: () => createDockerBackend({ socketPath: "/nonexistent/docker.sock" }),
      startHint: /dockerd/,
      through: (socketPath: string) => createDockerBackend({ socketPath }),
      socketPath: DOCKER_SOCKET,
      waitPath: (id: string) => `/containers/${id}/wait`,
    },
  },
  {
    name: "podman",
    make: () => createPodmanBackend({ socketPath: PODMAN_SOCKET }),
    engine: {
      cli: ["podman", "--url", `unix://${PODMAN_SOCKET}`],
      unreachable: () => createPodmanBackend({ socketPath: "/nonexistent/podman.sock" }),
      startHint: /podman system service/,
      through: (socketPath: string) => createPodmanBackend({ socketPath }),
      socketPath: PODMAN_SOCKET,
      // Not the Docker-compatible wait: Podman 4.3 polls the OCI runtime for it, about a third
      // of a core for each container waited on (npm run bench:containers).
      waitPath: (id: string) => `/v4.0.0/libpod/containers/${id}/wait`,
    },
  },
].filter((t) => WANTED.includes(t.name));

/** Output and status of one exec run to its end. */
async function run(b: RuntimeBackend, h: SandboxHandle, script: string, cwd = "/tmp") {
  const x = await b.exec(h, {
    argv: ["sh", "-c", script],
    cwd,
    env: { PATH: "/usr/local/bin:/usr/bin:/bin" },
  });
  const lines: string[] = [];
  x.onStdoutLine((l) => lines.push(l));
  const status = await x.exited;
  return { ...status, lines, stderr: x.stderrTail() };
}

/**
 * A Unix socket in front of an engine's, noting the path of every HTTP request that goes
 * through (query cut off); close() ends it and every connection through it.
 */
async function recordingProxy(engineSocket: string) {
  const dir = mkdtempSync(path.join(tmpdir(), "engine-proxy-"));
  const socketPath = path.join(dir, "engine.sock");
  const sent: string[] = [];
  const open = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const engine = net.connect(engineSocket);
    const i = sent.push("") - 1;
    client.on("data", (d: Buffer) => (sent[i] += d.toString("latin1")));
    for (const [from, to] of [
      [client, engine],
      [engine, client],
    ] as const) {
      open.add(from);
      from.pipe(to);
      from.on("error", () => to.destroy());
      from.on("close", () => (open.delete(from), to.destroy()));
    }
  });
  const listen = () => new Promise<void>((resolve) => server.listen(socketPath, resolve));
  await listen();
  return {
    socketPath,
    listen,
    requests: () =>
      sent.flatMap((s) =>
        [...s.matchAll(/(?:^|\r\n)(?:GET|POST|PUT|DELETE|HEAD) ([^ ?]+)\S* HTTP\/1\.1\r\n/g)].map(
          (m) => m[1]!,
        ),
      ),
    async close(remove = true) {
      for (const s of open) s.destroy();
      await new Promise((resolve) => server.close(resolve));
      if (remove) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Every command line alive in the sandbox (inside the container, through an exec). */
async function processesInside(b: RuntimeBackend, h: SandboxHandle): Promise<string[]> {
  const r = await run(
    b,
    h,
    `for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline 2>/dev/null; echo; done`,
  );
  return r.lines.filter((l) => l.trim() !== "");
}

describe.each(TARGETS)("runtime conformance: $name", (target) => {
  let b: RuntimeBackend;
  let fp: Fingerprint;
  let workspace: string;

  const spec = (over: Partial<SandboxSpec> = {}): SandboxSpec => ({
    nodeId: NODE,
    agentId: `a-${randomUUID().slice(0, 8)}`,
    image: IMAGE,
    mounts: [{ hostPath: workspace }],
    env: { CONDUCTOR_TEST: "1" },
    labels: { [SESSION_LABEL]: SESSION },
    limits: { memoryBytes: 256 * 2 ** 20, cpus: 1, pids: 256, ulimits: ULIMITS },
    network: "none",
    user: USER,
    ...over,
  });
  const started = async (over: Partial<SandboxSpec> = {}) => {
    const h = await b.create(spec(over));
    await b.start(h);
    return h;
  };
  /**
   * Limits, isolation, images and engine errors exist only where there is an engine: the
   * process backend's fingerprint says it enforces none, so those cases are not its to pass.
   */
  const engineIt = target.engine ? it : () => undefined;
  const processIt = target.engine ? () => undefined : it;

  processIt(
    "says in its fingerprint that it isolates (bubblewrap) but enforces no limits",
    async () => {
      expect(fp).toMatchObject({
        healthy: true,
        capabilities: { limits: false, networkIsolation: true },
      });
      expect(fp.detail).toMatch(/bubblewrap/);
    },
  );

  processIt(
    "isolates: non-root, system read-only, only its mounts, its own processes, no network",
    async () => {
      const hidden = mkdtempSync(path.join(tmpdir(), "conformance-hidden-"));
      chmodSync(hidden, 0o777); // not permissions: only the missing mount may hide it
      try {
        const h = await started();
        const r = await run(
          b,
          h,
          [
            "id -u",
            "touch /usr/rootfile 2>/dev/null && echo usr-writable || echo usr-ro",
            "echo x >/tmp/f && echo tmp-ok",
            `echo x >${workspace}/from-inside && echo ws-ok`,
            `ls ${hidden} >/dev/null 2>&1 && echo hidden-visible || echo hidden-absent`,
            "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status | tr -s '\\t ' ' '",
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
            // Its own sandbox's processes alone: bwrap's init and this pipeline, nothing else.
            "cat /proc/[0-9]*/comm 2>/dev/null | grep -cvxE 'bwrap|sh|cat|grep'",
          ].join("; "),
          workspace,
        );
        expect(r.lines, r.stderr).toEqual([
          "1000",
          "usr-ro",
          "tmp-ok",
          "ws-ok",
          "hidden-absent",
          "CapEff: 0000000000000000",
          "CapBnd: 0000000000000000",
          "NoNewPrivs: 1",
          "lo",
          "0",
        ]);
      } finally {
        rmSync(hidden, { recursive: true, force: true });
      }
    },
  );

  beforeAll(async () => {
    b = target.make();
    fp = await b.fingerprint();
    expect(fp.healthy, fp.detail).toBe(true);
    workspace = mkdtempSync(path.join(tmpdir(), `conformance-ws-${target.name}-`));
    chmodSync(workspace, 0o777); // the sandbox's uid 1000 writes here
  });

  afterAll(async () => {
    const mine = { [SESSION_LABEL]: SESSION };
    for (const h of await b.list(mine)) await b.destroy(h);
    const left = await b.list(mine);
    await b.close();
    rmSync(workspace, { recursive: true, force: true });
    expect(left, "sandboxes leaked by the suite").toEqual([]);
  });

  it("fingerprints healthy and names its runtime", () => {
    expect(fp.runtime).toBe(target.name);
    expect(b.name).toBe(target.name);
  });

  it("creates, starts, execs, stops and destroys", async () => {
    const h = await started();
    expect((await b.inspect(h)).running).toBe(true);
    const r = await run(b, h, "echo hello");
    expect(r).toMatchObject({ code: 0, signal: null, lines: ["hello"] });
    await b.stop(h, 1000);
    expect((await b.inspect(h)).running).toBe(false);
    await b.destroy(h);
    expect((await b.list({ [LABEL_AGENT]: h.agentId })).map((x) => x.id)).not.toContain(h.id);
    await b.destroy(h); // destroying a missing one is fine
  });

  it("streams stdout lines in order, keeps a stderr tail, reports exit codes", async () => {
    const h = await started();
    const r = await run(
      b,
      h,
      'i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done; echo oops >&2; exit 7',
    );
    expect(r.code).toBe(7);
    expect(r.lines).toEqual(Array.from({ length: 300 }, (_, i) => `line ${i}`));
    expect(r.stderr).toContain("oops");
    expect((await run(b, h, "true")).code).toBe(0);
    const missing = await run(b, h, "exec /nonexistent/program");
    expect(missing.code).not.toBe(0);
  });

  it("hands over a line while the program still runs", async () => {
    const h = await started();
    const x = await b.exec(h, { argv: ["sh", "-c", "echo first; sleep 30"], cwd: "/tmp", env: {} });
    const first = await new Promise<string>((resolve) => x.onStdoutLine(resolve));
    expect(first).toBe("first");
    let ended = false;
    x.exited.then(
      () => (ended = true),
      () => (ended = true),
    );
    expect(ended).toBe(false);
    await x.kill(500);
    expect(ended).toBe(true);
  });

  it("holds a program's output while paused, and hands over all of it once resumed", async () => {
    const h = await started();
    // 20,000 lines of 1,000 bytes (20 MB), then a last line once all of them were taken.
    const script = 'yes "$(head -c 999 /dev/zero | tr "\\0" a)" | head -n 20000; echo written';
    const x = await b.exec(h, { argv: ["sh", "-c", script], cwd: "/tmp", env: {} });
    const lines: string[] = [];
    let ended = false;
    x.exited.then(
      () => (ended = true),
      () => (ended = true),
    );
    const first = new Promise<void>((resolve) =>
      x.onStdoutLine((l) => {
        if (lines.push(l) === 1) {
          x.pause();
          resolve();
        }
      }),
    );
    await first;
    // Time for the whole 20 MB to pass, had it not been paused (an observation, not a wait
    // for an event: the point is that nothing comes).
    await new Promise((r) => setTimeout(r, 1500));
    expect(ended).toBe(false);
    expect(lines.length).toBeLessThan(2000);
    x.resume();
    const status = await x.exited;
    expect(status.code).toBe(0);
    expect(lines.length).toBe(20_001);
    expect(lines.at(-1)).toBe("written");
  });

  it("kill ends the exec and everything it started (group, escaped session, TERM-deaf)", async () => {
    const h = await started();
    const marker = `CONDUCTOR_TASK=${randomUUID()}`;
    const [k, v] = marker.split("=") as [string, string];
    const script =
      'sleep 1001 & setsid sleep 1002 & (trap "" TERM; sleep 1003) & echo ready; sleep 1004';
    const x = await b.exec(h, { argv: ["sh", "-c", script], cwd: "/tmp", env: { [k]: v }, marker });
    await new Promise<void>((resolve) => x.onStdoutLine(() => resolve()));
    const status = await x.kill(500);
    expect(status.code === 0 && status.signal === null).toBe(false);
    if (target.engine) {
      // Neither the sleeps nor the wrapper whose command line holds them.
      expect((await processesInside(b, h)).filter((l) => /sleep 100[1-4]/.test(l))).toEqual([]);
    } else {
      expect(await markedPids(marker)).toEqual([]);
    }
  });

  it("ends what a finished exec left running in the background", async () => {
    const h = await started();
    const marker = `CONDUCTOR_TASK=${randomUUID()}`;
    const [k, v] = marker.split("=") as [string, string];
    const x = await b.exec(h, {
      argv: ["sh", "-c", "sleep 1005 & echo started"],
      cwd: "/tmp",
      env: { [k]: v },
      marker,
    });
    expect((await x.exited).code).toBe(0);
    if (target.engine) {
      expect((await processesInside(b, h)).filter((l) => l.includes("sleep 1005"))).toEqual([]);
    } else {
      expect(await markedPids(marker)).toEqual([]);
    }
  });

  it("ends a run that prints a line longer than MAX_LINE_BYTES, and says why", async () => {
    const h = await started();
    const x = await b.exec(h, {
      argv: ["sh", "-c", `head -c ${MAX_LINE_BYTES + 1024} /dev/zero; echo; sleep 1006`],
      cwd: "/tmp",
      env: {},
    });
    const lines: string[] = [];
    x.onStdoutLine((l) => lines.push(l));
    const status = await x.exited;
    expect(status.code === 0 && status.signal === null).toBe(false);
    expect(lines).toEqual([]);
    expect(x.stderrTail()).toMatch(/printed a line over \d+ bytes on stdout and was ended/);
  });

  it("labels what it creates and lists by label", async () => {
    const tag = randomUUID();
    const h = await b.create(spec({ labels: { [SESSION_LABEL]: SESSION, "test.tag": tag } }));
    expect(h.labels).toMatchObject({
      [LABEL_NODE]: NODE,
      [LABEL_AGENT]: h.agentId,
      "test.tag": tag,
    });
    const st = await b.inspect(h);
    expect(st.labels).toMatchObject({
      [LABEL_NODE]: NODE,
      [LABEL_AGENT]: h.agentId,
      [SESSION_LABEL]: SESSION,
    });
    const found = await b.list({ "test.tag": tag, [LABEL_NODE]: NODE });
    expect(found.map((x) => x.id)).toEqual([h.id]);
    expect(found[0]?.agentId).toBe(h.agentId);
    expect(await b.list({ "test.tag": randomUUID() })).toEqual([]);
  });

  it("reports memory use and pids", async () => {
    const h = await started();
    const x = await b.exec(h, { argv: ["sh", "-c", "echo up; sleep 30"], cwd: "/tmp", env: {} });
    await new Promise<void>((resolve) => x.onStdoutLine(() => resolve()));
    const s = await b.stats(h);
    expect(s.pids).toBeGreaterThanOrEqual(1);
    expect(s.memoryBytes).toBeGreaterThan(0);
    await x.kill(500);
  });

  engineIt("applies limits: read back from the engine and from inside", async () => {
    const h = await started({
      limits: { memoryBytes: 96 * 2 ** 20, cpus: 0.5, pids: 77, ulimits: ULIMITS },
    });
    const st = await b.inspect(h);
    expect(st.limits).toEqual({ memoryBytes: 96 * 2 ** 20, cpus: 0.5, pids: 77 });
    const cg = (v2: string, v1: string) =>
      `cat /sys/fs/cgroup/${v2} 2>/dev/null || cat /sys/fs/cgroup/${v1}`;
    const r = await run(
      b,
      h,
      [
        cg("memory.max", "memory/memory.limit_in_bytes"),
        cg("pids.max", "pids/pids.max"),
        `${cg("cpu.max", "cpu/cpu.cfs_quota_us")} | cut -d' ' -f1`,
        "ulimit -n",
      ].join("; "),
    );
    expect(r.lines).toEqual([String(96 * 2 ** 20), "77", "50000", String(ULIMITS.nofile)]);
  });

  engineIt("isolates: non-root, read-only root, no capabilities, no network", async () => {
    const h = await started();
    const st = await b.inspect(h);
    expect(st).toMatchObject({
      user: USER,
      network: "none",
      readOnlyRootfs: true,
      noNewPrivileges: true,
    });
    expect(st.capDrop?.length).toBeGreaterThan(0);
    const r = await run(
      b,
      h,
      [
        "id -u",
        "touch /rootfile 2>/dev/null && echo root-writable || echo root-ro",
        "echo x >/tmp/f && echo tmp-ok",
        `echo x >${workspace}/from-inside && echo ws-ok`,
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status | tr -s '\\t ' ' '",
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
      ].join("; "),
    );
    expect(r.lines).toEqual([
      "1000",
      "root-ro",
      "tmp-ok",
      "ws-ok",
      "CapEff: 0000000000000000",
      "CapBnd: 0000000000000000",
      "NoNewPrivs: 1",
      "lo",
    ]);
    expect(readFileSync(path.join(workspace, "from-inside"), "utf8")).toBe("x\n");
  });

  it("binds an exec's own folders for that exec alone (capabilities.execMounts)", async (ctx) => {
    if (!fp.capabilities.execMounts) return ctx.skip();
    const extra = mkdtempSync(path.join(tmpdir(), "conformance-exec-mount-"));
    chmodSync(extra, 0o777);
    try {
      const h = await started();
      const x = await b.exec(h, {
        argv: ["sh", "-c", "echo inside > task.txt && pwd"],
        cwd: extra,
        env: { PATH: "/usr/local/bin:/usr/bin:/bin" },
        mounts: [{ hostPath: extra }],
      });
      const lines: string[] = [];
      x.onStdoutLine((l) => lines.push(l));
      expect((await x.exited).code).toBe(0);
      expect(lines).toEqual([extra]);
      expect(readFileSync(path.join(extra, "task.txt"), "utf8")).toBe("inside\n");
      // The next exec, without it, does not see it.
      const after = await run(b, h, `test -e ${extra}/task.txt && echo seen || echo unseen`);
      expect(after.lines).toEqual(["unseen"]);
    } finally {
      rmSync(extra, { recursive: true, force: true });
    }
  });

  it("ends a run when its lifeline closes, and keeps the sandbox (capabilities.runLifeline)", async (ctx) => {
    if (!fp.capabilities.runLifeline) return ctx.skip();
    const dir = mkdtempSync(path.join(tmpdir(), "conformance-lifeline-"));
    const lifeline = await startLifeline(path.join(dir, "lifeline.sock"), undefined);
    chmodSync(dir, 0o755);
    chmodSync(lifeline.socketPath, 0o666); // the sandbox's uid 1000 connects
    try {
      const h = await started({
        mounts: [{ hostPath: workspace }, { hostPath: dir }],
        env: { CONDUCTOR_RUN_LIFELINE: lifeline.socketPath },
      });
      lifeline.arm();
      // A graceful kill stays graceful: the lifeline's holder is spared the TERM.
      const polite = await b.exec(h, {
        argv: ["sh", "-c", "trap 'echo term; exit 0' TERM; echo up; sleep 1010 & wait"],
        cwd: "/tmp",
        env: {},
      });
      const politeLines: string[] = [];
      await new Promise<void>((resolve) =>
        polite.onStdoutLine((l) => (politeLines.push(l), resolve())),
      );
      await polite.kill(5000);
      expect(politeLines).toEqual(["up", "term"]);
      // Cutting the lifeline ends the run and all it started; the sandbox stays.
      const x = await b.exec(h, {
        argv: ["sh", "-c", "sleep 1008 & echo up; sleep 1009"],
        cwd: "/tmp",
        env: {},
      });
      await new Promise<void>((resolve) => x.onStdoutLine(() => resolve()));
      lifeline.cut();
      const status = await x.exited;
      expect(status.code === 0 && status.signal === null).toBe(false);
      lifeline.arm(); // for the look inside
      expect((await processesInside(b, h)).filter((l) => /sleep 10(08|09|10)/.test(l))).toEqual([]);
      expect((await b.inspect(h)).running).toBe(true);
    } finally {
      await lifeline.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("ends a run whose lifeline gets no tick for CONDUCTOR_RUN_LIFELINE_IDLE_MS, not while it does (capabilities.runLifeline)", async (ctx) => {
    if (!fp.capabilities.runLifeline) return ctx.skip();
    const dir = mkdtempSync(path.join(tmpdir(), "conformance-idle-"));
    const lifeline = await startLifeline(path.join(dir, "lifeline.sock"), undefined);
    chmodSync(dir, 0o755);
    chmodSync(lifeline.socketPath, 0o666); // the sandbox's uid 1000 connects
    const ticker = setInterval(() => lifeline.tick(), 100);
    try {
      const h = await started({
        mounts: [{ hostPath: workspace }, { hostPath: dir }],
        env: { CONDUCTOR_RUN_LIFELINE: lifeline.socketPath },
      });
      lifeline.arm();
      // One line every 100 ms: how long the run lived shows in how many came.
      const x = await b.exec(h, {
        argv: ["sh", "-c", "sleep 1012 & while :; do echo beat; sleep 0.1; done"],
        cwd: "/tmp",
        env: { CONDUCTOR_RUN_LIFELINE_IDLE_MS: "800" },
      });
      let beats = 0;
      let beatsWhenStopped = 0;
      x.onStdoutLine(() => {
        beats++;
        // 3 s of ticks (nearly four idle periods) kept it running; now they stop.
        if (beats === 30) {
          clearInterval(ticker);
          beatsWhenStopped = beats;
        }
      });
      const status = await x.exited;
      expect(status.code === 0 && status.signal === null).toBe(false);
      expect(beatsWhenStopped).toBe(30);
      // Ended within a few idle periods of the last tick.
      expect(beats - beatsWhenStopped).toBeLessThan(30);
      lifeline.arm(); // for the look inside
      expect((await processesInside(b, h)).filter((l) => /sleep 1012/.test(l))).toEqual([]);
    } finally {
      clearInterval(ticker);
      await lifeline.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("ends a sandbox whose lifeline nobody has listened on for the grace period (capabilities.runLifeline, image)", async (ctx) => {
    // A process sandbox is a folder: nothing of it runs between runs.
    if (!fp.capabilities.runLifeline || !fp.capabilities.image) return ctx.skip();
    const dir = mkdtempSync(path.join(tmpdir(), "conformance-orphan-"));
    const sock = path.join(dir, "lifeline.sock");
    const held = new Set<net.Socket>();
    let watched: () => void = () => undefined;
    const watching = new Promise<void>((resolve) => (watched = resolve));
    const server = net.createServer((s) => {
      s.on("error", () => s.destroy());
      held.add(s);
      s.resume();
      watched();
    });
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    chmodSync(dir, 0o755);
    chmodSync(sock, 0o666);
    try {
      const h = await started({
        mounts: [{ hostPath: workspace }, { hostPath: dir }],
        env: { CONDUCTOR_RUN_LIFELINE: sock, CONDUCTOR_ORPHAN_GRACE_SECONDS: "5" },
      });
      await watching; // the container's main process holds on while a host listens
      expect((await b.inspect(h)).running).toBe(true);
      for (const s of held) s.destroy();
      await new Promise((resolve) => server.close(resolve));
      const st = await b.waitForExit(h, AbortSignal.timeout(45_000));
      expect(st.running).toBe(false);
    } finally {
      for (const s of held) s.destroy();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("declares its capabilities in the fingerprint", () => {
    const c = fp.capabilities;
    expect(c).toEqual({
      limits: expect.any(Boolean) as boolean,
      networkIsolation: expect.any(Boolean) as boolean,
      image: Boolean(target.engine),
      runLifeline: true,
      recover: true,
      execMounts: !target.engine,
    });
  });

  it("recovers after a restart: a new backend finds the sandbox and execs in it", async () => {
    const h = await started();
    await b.exec(h, { argv: ["true"], cwd: "/tmp", env: {} }).then((x) => x.exited);
    const restarted = target.make();
    try {
      const found = await restarted.list({ [LABEL_AGENT]: h.agentId, [SESSION_LABEL]: SESSION });
      expect(found.map((x) => x.id)).toEqual([h.id]);
      const back = await restarted.recover(found[0]!);
      expect(back?.id).toBe(h.id);
      const r = await run(restarted, back!, "echo again");
      expect(r.lines).toEqual(["again"]);
    } finally {
      await restarted.close();
    }
  });

  it("reaps orphans: a new backend destroys everything list() finds", async () => {
    const tag = randomUUID();
    const labels = { [SESSION_LABEL]: SESSION, "test.reap": tag };
    await started({ labels });
    await b.create(spec({ labels }));
    const reaper = target.make();
    try {
      const orphans = await reaper.list({ "test.reap": tag });
      expect(orphans).toHaveLength(2);
      for (const h of orphans) await reaper.destroy(h);
      expect(await reaper.list({ "test.reap": tag })).toEqual([]);
    } finally {
      await reaper.close();
    }
  });

  it("waitForExit honours its abort signal", async () => {
    const h = await started();
    const ac = new AbortController();
    const waiting = b.waitForExit(h, ac.signal);
    ac.abort();
    const st = await waiting;
    if (target.engine) expect(st.running).toBe(true);
  });

  engineIt("waitForExit reports an OOM kill as such", async () => {
    // 16,000 pages: the kernel scales oom_score_adj by limit/1000 pages, so PID 1 (adj
    // 1000) scores above a whole limit's worth; four hogs of 20 MiB each score far less.
    const h = await started({ limits: { memoryBytes: 16_000 * 4096, pids: 64, ulimits: ULIMITS } });
    const ac = new AbortController();
    const waiting = b.waitForExit(h, ac.signal);
    // Make the container's PID 1 (nobody's, so the agent can't) the OOM killer's choice, from
    // the host, so the container itself dies.
    const [cli, ...args] = target.engine!.cli as [string, ...string[]];
    const pid = (
      await promisify(execFile)(cli, [...args, "inspect", "-f", "{{.State.Pid}}", h.id])
    ).stdout.trim();
    writeFileSync(`/proc/${pid}/oom_score_adj`, "1000");
    const hogs =
      "for i in 1 2 3 4; do dd if=/dev/zero of=/dev/null bs=20M count=100000 & done; wait";
    const hog = await b.exec(h, { argv: ["sh", "-c", hogs], cwd: "/tmp", env: {} });
    const st = await waiting;
    expect(st).toMatchObject({ running: false, oomKilled: true, reason: "out of memory" });
    await hog.exited; // ends with the container
  });

  engineIt("reports a container killed from outside as not running", async () => {
    const h = await started();
    const waiting = b.waitForExit(h, new AbortController().signal);
    const [cli, ...args] = target.engine!.cli as [string, ...string[]];
    await promisify(execFile)(cli, [...args, "kill", h.id]);
    const st = await waiting;
    expect(st).toMatchObject({ running: false, oomKilled: false, reason: "killed" });
    expect((await b.inspect(h)).running).toBe(false);
    expect(await b.recover(h)).toBeUndefined();
  });

  engineIt(
    "watches a container with the engine's own wait and probes it with pings, reading its version again after a loss",
    async () => {
      const engine = target.engine!;
      const proxy = await recordingProxy(engine.socketPath);
      const watching = engine.through(proxy.socketPath);
      const probes = () =>
        proxy
          .requests()
          .filter((p) => /\/(version|info|_ping)$/.test(p))
          .map((p) => p.replace(/^\/v\d[^/]*(?=\/)/, "")); // the API version, where a client names it
      const seen = { ...fp, detail: fp.detail.replace(engine.socketPath, proxy.socketPath) };
      try {
        for (let i = 0; i < 3; i++) expect(await watching.fingerprint()).toEqual(seen);
        expect(probes().sort()).toEqual(["/_ping", "/_ping", "/info", "/version"]);

        const h = await started();
        const waiting = watching.waitForExit(h, AbortSignal.timeout(30_000));
        const [cli, ...args] = engine.cli as [string, ...string[]];
        await promisify(execFile)(cli, [...args, "kill", h.id]);
        expect(await waiting).toMatchObject({ running: false, reason: "killed" });
        const waits = proxy.requests().filter((p) => p.endsWith("/wait"));
        expect(waits.length).toBeGreaterThan(0);
        expect(new Set(waits)).toEqual(new Set([engine.waitPath(h.id)]));

        // The engine away: unhealthy; back (perhaps another version): read in full again.
        await proxy.close(false);
        expect(await watching.fingerprint()).toMatchObject({ healthy: false });
        await proxy.listen();
        expect(await watching.fingerprint()).toEqual(seen);
        expect(probes().filter((p) => p === "/version")).toHaveLength(2);
      } finally {
        await watching.close();
        await proxy.close();
      }
    },
  );

  engineIt(
    "image: forwards 127.0.0.1:8080 inside to the model socket mounted from the host",
    async () => {
      const dir = mkdtempSync(path.join(tmpdir(), "conformance-model-"));
      const sock = path.join(dir, "model.sock");
      const server = createServer((req, res) => res.end(`pong ${req.url}`));
      await new Promise<void>((resolve) => server.listen(sock, resolve));
      // The container's uid must traverse the folder and write to the socket to connect.
      chmodSync(dir, 0o755);
      chmodSync(sock, 0o666);
      try {
        const h = await started({
          mounts: [{ hostPath: workspace }, { hostPath: dir }],
          env: { CONDUCTOR_MODEL_SOCKET: sock },
        });
        // socat starts with the container: poll for its listener, bounded.
        const r = await run(
          b,
          h,
          "i=0; while [ $i -lt 50 ]; do wget -qO- http://127.0.0.1:8080/v1/ping && exit 0; i=$((i+1)); sleep 0.1; done; exit 1",
        );
        expect(r.lines, r.stderr).toEqual(["pong /v1/ping"]);
      } finally {
        server.closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  engineIt("removes a container that failed to start and says why", async () => {
    const tag = randomUUID();
    // More open files than the kernel allows anyone (fs.nr_open): the start must fail.
    const h = await b.create(
      spec({
        labels: { [SESSION_LABEL]: SESSION, "test.tag": tag },
        limits: { ulimits: { ...ULIMITS, nofile: 2 ** 30 } },
      }),
    );
    await expect(b.start(h)).rejects.toThrow(
      /starting container .*removed it.*rlimit.*runtime\.ulimits/s,
    );
    expect(await b.list({ "test.tag": tag })).toEqual([]);
  });

  engineIt("says which image is missing and how to build it", async () => {
    const image = `conductor-missing-${randomUUID().slice(0, 8)}:none`;
    await expect(b.create(spec({ image }))).rejects.toThrow(
      new RegExp(`${image}.*bash deploy/agent-image/build-offline\\.sh`),
    );
  });

  engineIt("says where the engine socket is and how to start the engine", async () => {
    const dead = target.engine!.unreachable();
    try {
      const f = await dead.fingerprint();
      expect(f.healthy).toBe(false);
      expect(f.detail).toMatch(/\/nonexistent\/\w+\.sock \(ENOENT\)/);
      expect(f.detail).toMatch(target.engine!.startHint);
      await expect(dead.create(spec())).rejects.toThrow(/\/nonexistent\/\w+\.sock.*start it with/);
    } finally {
      await dead.close();
    }
  });
});
