import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import {
  LABEL_AGENT,
  LABEL_NODE,
  type ExecRequest,
  type Execution,
  type Fingerprint,
  type RuntimeBackend,
  type SandboxHandle,
  type SandboxSpec,
  type SandboxStats,
  type SandboxStatus,
} from "../runtime.ts";
import { execProcess, killMarked, markedPids } from "./exec.ts";

/** Options of the process backend. */
export interface ProcessBackendOptions {
  /** Where sandbox records are kept, so list/recover work after a restart. */
  stateDir: string;
}

interface Record_ {
  handle: SandboxHandle;
  running: boolean;
}

/**
 * The embedded default backend: an agent is a plain folder and its runs are local
 * processes (no container engine needed). Limits and network isolation are not enforced;
 * its fingerprint says so.
 */
export function createProcessBackend(opts: ProcessBackendOptions): RuntimeBackend {
  mkdirSync(opts.stateDir, { recursive: true });
  const records = new Map<string, Record_>();
  const exits = new Map<string, () => void>();
  const file = (id: string) => path.join(opts.stateDir, `${id.replaceAll("/", "_")}.json`);
  // Unique per state folder, so two AgentHosts on one machine never end each other's runs.
  const sandboxTag = (id: string) => `${path.resolve(opts.stateDir)}/${id}`;
  const marker = (id: string) => `CONDUCTOR_SANDBOX=${sandboxTag(id)}`;
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
  });

  return {
    name: "process",
    async fingerprint(): Promise<Fingerprint> {
      return {
        runtime: "process",
        healthy: true,
        detail: `local processes, node ${process.version}`,
        capabilities: { limits: false, networkIsolation: false },
      };
    },
    async create(spec: SandboxSpec) {
      const handle = {
        id: `${spec.nodeId}.${spec.agentId}`,
        agentId: spec.agentId,
        labels: { ...spec.labels, [LABEL_NODE]: spec.nodeId, [LABEL_AGENT]: spec.agentId },
      };
      for (const m of spec.mounts) mkdirSync(m.hostPath, { recursive: true });
      writeFileSync(file(handle.id), JSON.stringify(handle));
      records.set(handle.id, { handle, running: false });
      return handle;
    },
    async start(h) {
      get(h).running = true;
    },
    async exec(h: SandboxHandle, req: ExecRequest): Promise<Execution> {
      if (!get(h).running) throw new Error(`process sandbox ${h.id} is not running`);
      const env = { ...req.env, CONDUCTOR_SANDBOX: sandboxTag(h.id) };
      return execProcess({ ...req, env });
    },
    async stop(h, graceMs) {
      const r = records.get(h.id);
      if (r) r.running = false;
      if (killMarked(marker(h.id), "SIGTERM") > 0) {
        const deadline = Date.now() + graceMs;
        while (markedPids(marker(h.id)).length > 0 && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        killMarked(marker(h.id), "SIGKILL");
      }
      exits.get(h.id)?.();
    },
    async destroy(h) {
      killMarked(marker(h.id), "SIGKILL");
      records.delete(h.id);
      rmSync(file(h.id), { force: true });
      exits.get(h.id)?.();
    },
    async inspect(h) {
      return status(records.get(h.id), h);
    },
    async stats(h): Promise<SandboxStats> {
      const pids = markedPids(marker(h.id));
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
        const h = JSON.parse(readFileSync(path.join(opts.stateDir, name), "utf8")) as SandboxHandle;
        if (Object.entries(labels).every(([k, v]) => h.labels[k] === v)) out.push(h);
      }
      return out;
    },
    async recover(h) {
      // Processes do not survive their AgentHost usefully: end strays, keep the folder.
      killMarked(marker(h.id), "SIGKILL");
      records.set(h.id, { handle: h, running: true });
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
    async close() {},
  };
}
