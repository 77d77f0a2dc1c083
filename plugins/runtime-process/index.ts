import { mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import {
  LABEL_AGENT,
  LABEL_NODE,
  type ExecRequest,
  type Execution,
  type Fingerprint,
  type Mount,
  type RuntimeBackend,
  type SandboxHandle,
  type SandboxSpec,
  type SandboxStats,
  type SandboxStatus,
} from "../runtime.ts";
import { bwrapArgv, NSENTER, probeSandbox, type SandboxProbe } from "./bwrap.ts";
import { closeInheritedFds, descendants, execProcess, killMarked, markedPids } from "./exec.ts";
import { startAgentNetwork, type AgentNetwork } from "./forwarder.ts";

/** The program an unsandboxed run starts with when the agent has a model socket or a lifeline. */
export const LAUNCHER = path.join(import.meta.dirname, "launcher.ts");

/**
 * The first program of a sandboxed run with a model socket or a lifeline, as launcher.ts is
 * unsandboxed, without a Node start per run: `sh -c SANDBOX_LAUNCHER conductor-run MODEL
 * LIFELINE IDLE_SECONDS program [args…]` (empty strings for what the run has not).
 *
 * LIFELINE `pipe`: its fd 4 is one end of a socket pair whose other end only the AgentHost
 * holds (exec.ts). A forked shell waits on it and, when it reads the end — the AgentHost died,
 * however, even before bwrap tied the sandbox to it (--die-with-parent) — kills its process
 * group: no program is started for it. The AgentHost's cut() of the agent's lifeline socket it
 * sees itself, and kills the sandbox (index.ts exec). LIFELINE a socket path (a run with
 * IDLE_SECONDS: a joined node's, which must end when a frozen AgentHost stops ticking): socat
 * holds a connection to it (`socat -T IDLE_SECONDS`) and, when that ends, kills the group.
 *
 * MODEL is `served` when the run was started in its agent's network namespace, where the
 * agent's forwarder already serves the model on 127.0.0.1:8080 (forwarder.ts; its descriptor,
 * fd 3, is closed first); or a model socket, which it forwards 127.0.0.1:8080 of the sandbox's
 * own network namespace to, waiting until that listens (an AgentHost not running as root).
 * Either way the API key stays outside (the proxy adds it). Then it execs the program, which so
 * is the sandbox's first process — the group's leader: its exit status is the run's, TERM is
 * its own, and its end ends every other process of the run. The lifeline's holder ignores TERM
 * and socat is spared kill()'s TERM (exec.ts), so a graceful stop keeps its lifeline and its
 * model; it ignores SIGPIPE too, as its stderr dies with the AgentHost it says goodbye to.
 * Needs socat (Debian's) under /usr.
 */
export const SANDBOX_LAUNCHER = `exec 3<&-
umask 022
m=$1 l=$2 t=$3
shift 3
if [ -n "$m" ] && [ "$m" != served ]; then
  socat TCP-LISTEN:8080,bind=127.0.0.1,fork,reuseaddr "UNIX-CONNECT:$m" </dev/null >/dev/null &
fi
if [ "$l" = pipe ]; then
  (trap '' TERM INT HUP PIPE
    while read -r _; do :; done <&4
    echo "launcher: the run's lifeline closed; ending the run" >&2
    kill -KILL 0) </dev/null >/dev/null &
  exec 4<&-
elif [ -n "$l" ]; then
  (trap '' TERM INT HUP PIPE
    socat -u \${t:+-T "$t"} "UNIX-CONNECT:$l" OPEN:/dev/null
    echo "launcher: the run's lifeline closed or went silent; ending the run" >&2
    kill -KILL 0) </dev/null >/dev/null &
fi
if [ -n "$m" ] && [ "$m" != served ]; then
  listening() {
    while read -r _ a _ s _; do [ "$a $s" = "0100007F:1F90 0A" ] && return 0; done </proc/net/tcp
    return 1
  }
  i=0 # the lifeline's start gave socat time to listen
  until listening; do
    i=$((i + 1))
    [ $i -le 1000 ] || { echo "launcher: cannot start the model forwarder (socat)" >&2; exit 127; }
    sleep 0.005
  done
fi
[ -z "$m" ] || export ANTHROPIC_BASE_URL=http://127.0.0.1:8080
command -v "$1" >/dev/null || { echo "launcher: cannot start $1: not found" >&2; exit 127; }
exec "$@"`;

/**
 * A path as one parameter of a socat address: its special characters (`:` `,` `!` brackets,
 * quotes, backslash) escaped with a backslash, as socat(1) "lexical analysis" allows; a data
 * folder such as `/srv/conductor:a` or `/data,1` is otherwise cut into parameters.
 */
export function socatPath(p: string): string {
  return p.replace(/[\\:,!(){}[\]'"]/g, "\\$&");
}

/** CONDUCTOR_RUN_LIFELINE_IDLE_MS of an exec: how long its lifeline may be silent (0: any time). */
function idleOf(req: ExecRequest): number {
  const idle = req.env["CONDUCTOR_RUN_LIFELINE_IDLE_MS"];
  return idle && /^\d+$/.test(idle) ? Number(idle) : 0;
}

/**
 * Holds a connection to a lifeline socket (lifeline.ts) for a run from this process; `onClose`
 * runs when it closes or is refused (the AgentHost cut it), not after the returned release.
 */
function holdLifeline(socketPath: string, onClose: () => unknown): () => void {
  const s = net.connect(socketPath);
  let released = false;
  s.on("error", () => s.destroy());
  s.on("close", () => {
    if (!released) void Promise.resolve(onClose()).catch(() => undefined);
  });
  s.resume(); // ticks are not for this holder: dropped
  return () => {
    released = true;
    s.destroy();
  };
}

/** How process-runtime runs are contained (`runtime.process_sandbox`). */
export type ProcessSandbox = "bubblewrap" | "none";

/** Options of the process backend. */
export interface ProcessBackendOptions {
  /** Where sandbox records are kept, so list/recover work after a restart. */
  stateDir: string;
  /**
   * "bubblewrap" (default): every run in its own bubblewrap sandbox. "none": plain local
   * processes with the AgentHost's user and view of the machine — the operator's explicit,
   * unsafe opt-out for hosts where no sandbox can be made.
   */
  sandbox?: ProcessSandbox;
  /** Host paths every run needs besides the system, bound read-only (e.g. the CLI's folder). */
  readOnlyPaths?: string[];
  /** The node binary the launcher runs on (default: the one running this). */
  nodePath?: string;
  /** This process's uid (default process.getuid()); root binds as root and drops to the spec's user. */
  uid?: number;
}

interface Record_ {
  handle: SandboxHandle;
  spec: Pick<SandboxSpec, "mounts" | "env" | "user">;
  running: boolean;
  execs: Set<Execution & { pid: number | undefined }>;
  /** Sandboxed as root with a model socket: the agent's network namespace and forwarder. */
  network?: Promise<AgentNetwork> | undefined;
}

/**
 * The embedded default backend: an agent is a folder; each run is a local process inside
 * its own bubblewrap sandbox (user, pid, mount and network namespaces: the agent's mounts
 * and the system read-only, a non-root user, no network but what its sockets reach), which
 * ends with the run and with the AgentHost. No memory or CPU limits: its fingerprint says so.
 */
export function createProcessBackend(opts: ProcessBackendOptions): RuntimeBackend {
  mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
  // What this process inherited would reach every run (bwrap passes descriptors on).
  closeInheritedFds();
  const sandboxed = (opts.sandbox ?? "bubblewrap") === "bubblewrap";
  const uid = opts.uid ?? process.getuid?.() ?? 0;
  const nodePath = realpathSync(opts.nodePath ?? process.execPath);
  const readOnly: Mount[] = [
    ...(opts.readOnlyPaths ?? []).map((p) => ({ hostPath: realpathSync(p), readOnly: true })),
    { hostPath: path.dirname(nodePath), readOnly: true },
  ];
  /**
   * A run's argv: through a launcher when the sandbox has a model socket or a lifeline
   * (CONDUCTOR_RUN_LIFELINE; the exec's CONDUCTOR_RUN_LIFELINE_IDLE_MS bounds its silence).
   * Sandboxed it is SANDBOX_LAUNCHER (sh, and socat for what it forwards: a few ms of CPU), told
   * whether the model is `served` in the agent's network namespace already and whether its
   * lifeline is the `pipe` on its fd 4; unsandboxed, where no network namespace of its own gives
   * it a free port, the node launcher (~40 ms of CPU).
   */
  const launched = (
    env: Record<string, string>,
    req: ExecRequest,
    o: { served: boolean; pipe: boolean; idleMs: number },
  ): string[] => {
    const model = env["CONDUCTOR_MODEL_SOCKET"];
    const lifeline = env["CONDUCTOR_RUN_LIFELINE"];
    if (!model && !lifeline) return req.argv;
    const idleMs = lifeline ? o.idleMs : 0;
    if (sandboxed) {
      const seconds = idleMs > 0 ? String(idleMs / 1000) : "";
      return [
        "/bin/sh",
        "-c",
        SANDBOX_LAUNCHER,
        "conductor-run",
        o.served ? "served" : socatPath(model ?? ""),
        o.pipe ? "pipe" : socatPath(lifeline ?? ""),
        seconds,
        ...req.argv,
      ];
    }
    return [
      ...[nodePath, LAUNCHER],
      ...(model ? ["--model", model] : []),
      ...(lifeline ? ["--lifeline", lifeline] : []),
      ...(idleMs > 0 ? ["--idle-ms", String(idleMs)] : []),
      ...["--", ...req.argv],
    ];
  };
  const records = new Map<string, Record_>();
  const exits = new Map<string, () => void>();
  let probe: Promise<SandboxProbe> | undefined;
  const file = (id: string) => path.join(opts.stateDir, `${id.replaceAll("/", "_")}.json`);
  // Unique per state folder, so two AgentHosts on one machine never end each other's runs.
  const sandboxTag = (id: string) => `${path.resolve(opts.stateDir)}/${id}`;
  const marker = (id: string) => `CONDUCTOR_SANDBOX=${sandboxTag(id)}`;
  /** Root binds as root, then runs the agent as the spec's user; others run as themselves. */
  const runAs = (user: string) => {
    if (uid !== 0) return undefined;
    const [u, g] = user.split(":").map(Number);
    if (!u) throw new Error(`sandbox user "${user}" is not allowed: agents never run as root`);
    return { uid: u, gid: g ?? u };
  };
  const get = (h: SandboxHandle): Record_ => {
    const r = records.get(h.id);
    if (!r) throw new Error(`process sandbox ${h.id} does not exist (create or recover it first)`);
    return r;
  };
  const status = (r: Record_ | undefined, h: SandboxHandle): SandboxStatus => ({
    running: r?.running ?? false,
    oomKilled: false,
    ...(r?.running ? {} : { reason: "stopped" }),
    limits: {},
    labels: h.labels,
    ...(r && sandboxed ? { user: r.spec.user, network: "none" } : {}),
  });
  const endAll = async (r: Record_ | undefined, graceMs: number) => {
    // No exec under way may start a forwarder once this one is ended (agentNetwork).
    if (r) r.running = false;
    await Promise.all([...(r?.execs ?? [])].map((x) => x.kill(graceMs)));
    const network = r?.network;
    if (r) r.network = undefined;
    await network?.then(
      (n) => n.close(),
      () => undefined,
    );
  };
  /**
   * The agent's network namespace with its model forwarder, started at its first run (and again
   * when it has ended): only for an AgentHost running as root, sandboxed, whose agent has a
   * model socket (forwarder.ts); otherwise undefined, and each run gets a namespace of its own.
   */
  const agentNetwork = async (r: Record_): Promise<AgentNetwork | undefined> => {
    const model = r.spec.env["CONDUCTOR_MODEL_SOCKET"];
    const user = runAs(r.spec.user);
    if (!sandboxed || !model || !user) return undefined;
    for (let attempt = 1; ; attempt++) {
      // Never one more after a stop has ended the agent's (it would outlive the agent).
      if (!r.running) return undefined;
      const starting = (r.network ??= startAgentNetwork(model, user, socatPath, {
        CONDUCTOR_SANDBOX: sandboxTag(r.handle.id),
      }));
      let network: AgentNetwork;
      try {
        network = await starting;
      } catch (e) {
        if (r.network === starting) r.network = undefined;
        throw new Error(`cannot serve the model in the agent's sandbox: ${(e as Error).message}`);
      }
      if (network.alive()) return network;
      // It ended (or is ending): another is started.
      if (r.network === starting) r.network = undefined;
      await network.close();
      if (attempt === 2) throw new Error("the agent's model forwarder ended as soon as it started");
    }
  };
  const load = (name: string): Record_ => {
    const saved = JSON.parse(readFileSync(path.join(opts.stateDir, name), "utf8")) as {
      handle: SandboxHandle;
      spec: Record_["spec"];
    };
    return { ...saved, running: false, execs: new Set() };
  };

  return {
    name: "process",
    async fingerprint(): Promise<Fingerprint> {
      // Runs end with the AgentHost by themselves (bubblewrap's --die-with-parent); the
      // lifeline also ends them when a frozen AgentHost stops ticking (launcher.ts). A sandbox
      // is a folder and its record, which recover() takes up again.
      const capabilities = {
        limits: false,
        networkIsolation: sandboxed,
        image: false,
        runLifeline: true,
        recover: true,
        execMounts: true,
      };
      if (!sandboxed) {
        return {
          runtime: "process",
          healthy: true,
          detail: `UNSANDBOXED local processes (runtime.process_sandbox: none), node ${process.version}`,
          capabilities,
        };
      }
      probe ??= probeSandbox(runAs("1000:1000"));
      const p = await probe;
      return {
        runtime: "process",
        healthy: p.ok,
        detail: p.ok
          ? `bubblewrap sandboxes (${p.detail}), node ${process.version}`
          : `${p.detail}; or set runtime.process_sandbox: none to run agents unsandboxed, with this service's user and view of the machine (not safe)`,
        capabilities,
      };
    },
    async create(spec: SandboxSpec) {
      runAs(spec.user);
      const handle = {
        id: `${spec.nodeId}.${spec.agentId}`,
        agentId: spec.agentId,
        labels: { ...spec.labels, [LABEL_NODE]: spec.nodeId, [LABEL_AGENT]: spec.agentId },
      };
      for (const m of spec.mounts) mkdirSync(m.hostPath, { recursive: true });
      const saved = { mounts: spec.mounts, env: spec.env, user: spec.user };
      writeFileSync(file(handle.id), JSON.stringify({ handle, spec: saved }), { mode: 0o600 });
      records.set(handle.id, { handle, spec: saved, running: false, execs: new Set() });
      return handle;
    },
    async start(h) {
      get(h).running = true;
    },
    async exec(h: SandboxHandle, req: ExecRequest): Promise<Execution> {
      const r = get(h);
      if (!r.running) throw new Error(`process sandbox ${h.id} is not running`);
      const network = await agentNetwork(r);
      // From here to the spawn nothing awaits: network.fd stays open (forwarder.ts alive()).
      if (!r.running) throw new Error(`process sandbox ${h.id} is not running`);
      if (network && !network.alive())
        throw new Error("the agent's model forwarder ended as the run started");
      // A lifeline that need not notice a frozen AgentHost is a pipe, held from here (no socat).
      const lifeline = r.spec.env["CONDUCTOR_RUN_LIFELINE"];
      const idleMs = idleOf(req);
      const pipe = sandboxed && lifeline !== undefined && idleMs === 0;
      const argv = launched(r.spec.env, req, { served: network !== undefined, pipe, idleMs });
      const plan = {
        mounts: [...r.spec.mounts, ...readOnly, ...(req.mounts ?? [])],
        cwd: req.cwd,
        user: runAs(r.spec.user),
        argv,
        unsetEnv: ["CONDUCTOR_SANDBOX"],
      };
      const x = sandboxed
        ? execProcess(
            {
              ...req,
              // bwrap's own marker (the sandbox's processes do not get it): recover() ends a
              // run whose AgentHost died as it started, before bwrap tied itself to it.
              env: { ...req.env, CONDUCTOR_SANDBOX: sandboxTag(h.id) },
              // nsenter reads the namespace from its fd 3, the launcher then closes it.
              argv: network
                ? [NSENTER, "--net=/proc/self/fd/3", ...bwrapArgv({ ...plan, network: "entered" })]
                : bwrapArgv(plan),
            },
            { sandboxed: true, netnsFd: network?.fd, lifelinePipe: pipe },
          )
        : execProcess(
            { ...req, argv, env: { ...req.env, CONDUCTOR_SANDBOX: sandboxTag(h.id) } },
            { sandboxed: false },
          );
      r.execs.add(x);
      // The AgentHost's cut() of the agent's lifeline (or its refusal) ends the run at once.
      const held = pipe && lifeline ? holdLifeline(lifeline, () => x.kill(0)) : undefined;
      const forget = () => {
        r.execs.delete(x);
        held?.();
      };
      x.exited.then(forget, forget);
      if (!network) return x;
      // Its forwarder gone, the run cannot reach the model (a new one would hold another
      // namespace): it is ended now, saying why, not left to retry for minutes.
      let lost: string | undefined;
      const forgetEnd = network.onEnd(() => {
        lost = "the agent's model forwarder ended during the run, and with it its way to the model";
        x.kill(0).catch(() => undefined);
      });
      x.exited.then(forgetEnd, forgetEnd);
      const exited = x.exited.then((st) => (lost ? { ...st, lost } : st));
      return {
        ...x,
        exited,
        kill: async (graceMs) => {
          await x.kill(graceMs);
          return exited;
        },
      };
    },
    async stop(h, graceMs) {
      const r = records.get(h.id);
      if (r) r.running = false;
      await endAll(r, graceMs);
      if (!sandboxed && (await killMarked(marker(h.id), "SIGTERM")) > 0) {
        const deadline = Date.now() + graceMs;
        while ((await markedPids(marker(h.id))).length > 0 && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        await killMarked(marker(h.id), "SIGKILL");
      }
      exits.get(h.id)?.();
    },
    async destroy(h) {
      await endAll(records.get(h.id), 0);
      if (!sandboxed) await killMarked(marker(h.id), "SIGKILL");
      records.delete(h.id);
      rmSync(file(h.id), { force: true });
      exits.get(h.id)?.();
    },
    async inspect(h) {
      return status(records.get(h.id), h);
    },
    async stats(h): Promise<SandboxStats> {
      const execs = [...(records.get(h.id)?.execs ?? [])];
      const pids = sandboxed
        ? (
            await Promise.all(
              execs.map(async (x) => (x.pid ? [x.pid, ...(await descendants(x.pid))] : [])),
            )
          ).flat()
        : await markedPids(marker(h.id));
      let memoryBytes = 0;
      for (const pid of pids) {
        try {
          const rssPages = Number(readFileSync(`/proc/${pid}/statm`, "utf8").split(" ")[1]);
          memoryBytes += rssPages * 4096;
        } catch {
          // ended meanwhile
        }
      }
      return { memoryBytes, pids: pids.length };
    },
    async list(labels) {
      const out: SandboxHandle[] = [];
      for (const name of readdirSync(opts.stateDir)) {
        if (!name.endsWith(".json")) continue;
        const { handle } = load(name);
        if (Object.entries(labels).every(([k, v]) => handle.labels[k] === v)) out.push(handle);
      }
      return out;
    },
    async recover(h) {
      // Sandboxed runs died with their AgentHost (--die-with-parent), but for one whose start
      // raced its death (bwrap not yet tied to it: nsenter, bwrap's setup): it, and
      // unsandboxed strays, are found by their marker and ended here. The folder and its
      // record stay.
      await killMarked(marker(h.id), "SIGKILL");
      let r: Record_;
      try {
        r = load(path.basename(file(h.id)));
      } catch {
        return undefined;
      }
      records.set(h.id, { ...r, running: true });
      return h;
    },
    waitForExit(h, signal) {
      return new Promise((resolve) => {
        const done = () => {
          exits.delete(h.id);
          signal.removeEventListener("abort", done);
          resolve(status(records.get(h.id), h));
        };
        exits.set(h.id, done);
        signal.addEventListener("abort", done);
      });
    },
    async close() {
      await Promise.all([...records.values()].map((r) => endAll(r, 0)));
    },
  };
}
