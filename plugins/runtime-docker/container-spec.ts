import type Docker from "dockerode";
import { LABEL_AGENT, LABEL_HOST, LABEL_NODE, SANDBOX_INFRA_USER } from "../runtime.ts";
import type { SandboxSpec, SandboxStatus } from "../runtime.ts";

/** What the engine-specific wrapper decides beyond the spec. */
export interface ContainerDefaults {
  /** Run the engine's init (docker-init) as PID 1 so exec'd children are reaped. */
  init: boolean;
  /** Writable tmpfs folders on the read-only root: /tmp and the image's HOME. */
  tmpfs: string[];
  /** Ulimits applied unless the spec sets the same name (Podman needs nofile/nproc here). */
  defaultUlimits: Record<string, number>;
}

/** The user each run is exec'd as (the sandbox spec's user); read back by inspect. */
export const LABEL_USER = "dev.conductor.user";

/** The container's main process runs as nobody (see SANDBOX_INFRA_USER). */
export const INFRA_USER = SANDBOX_INFRA_USER;

/** Refuses an empty or root user: containers never run as root. */
export function checkUser(user: string): void {
  const name = user.split(":")[0] ?? "";
  if (name === "" || name === "0" || name === "root") {
    throw new Error(
      `sandbox user "${user}" is not allowed: containers never run as root (use e.g. "1000:1000")`,
    );
  }
}

/**
 * A container name the engine accepts, readable in `docker ps`, and unique per AgentHost
 * instance (its LABEL_HOST), so two AgentHosts on one engine never collide:
 * conductor-<node>-<host>-<agent>.
 */
export function containerName(spec: SandboxSpec): string {
  const host = spec.labels[LABEL_HOST]?.slice(0, 12);
  const parts = ["conductor", spec.nodeId, ...(host ? [host] : []), spec.agentId];
  return parts.join("-").replace(/[^a-zA-Z0-9_.-]/g, "_");
}

/**
 * The main process of a container whose runs have a lifeline (CONDUCTOR_RUN_LIFELINE), as the
 * container's own user: it idles while an AgentHost listens on that socket (a restarted one
 * re-adopts the container), and ends the container once none has for
 * CONDUCTOR_ORPHAN_GRACE_SECONDS (default 600), so an AgentHost killed and never restarted
 * leaves no running container. `wait` is interruptible, so TERM ends it at once; as PID 1 it
 * reaps what is handed to it.
 */
export const IDLE_WHILE_HOSTED = `trap 'exit 0' TERM INT
g=\${CONDUCTOR_ORPHAN_GRACE_SECONDS:-600}; t=0
while [ "$t" -lt "$g" ]; do
  socat -u "UNIX-CONNECT:$CONDUCTOR_RUN_LIFELINE" OPEN:/dev/null 2>/dev/null &
  if wait $!; then t=0; else t=$((t+5)); fi
  sleep 5 & wait $!
done`;

/** Translates a sandbox spec into the engine's create request (Docker API, Podman compat). */
export function createOptions(
  spec: SandboxSpec,
  image: string,
  d: ContainerDefaults,
): Docker.ContainerCreateOptions {
  const ulimits = { ...d.defaultUlimits, ...spec.limits.ulimits };
  const { memoryBytes, cpus, pids } = spec.limits;
  return {
    name: containerName(spec),
    Image: image,
    ...(spec.env["CONDUCTOR_RUN_LIFELINE"] ? { Cmd: ["/bin/sh", "-c", IDLE_WHILE_HOSTED] } : {}),
    User: INFRA_USER,
    Env: Object.entries(spec.env).map(([k, v]) => `${k}=${v}`),
    Labels: {
      ...spec.labels,
      [LABEL_NODE]: spec.nodeId,
      [LABEL_AGENT]: spec.agentId,
      [LABEL_USER]: spec.user,
    },
    HostConfig: {
      Mounts: spec.mounts.map((m) => ({
        Type: "bind" as const,
        Source: m.hostPath,
        Target: m.sandboxPath ?? m.hostPath,
        ReadOnly: m.readOnly ?? false,
      })),
      ...(memoryBytes !== undefined ? { Memory: memoryBytes, MemorySwap: memoryBytes } : {}),
      ...(cpus !== undefined ? { NanoCpus: Math.round(cpus * 1e9) } : {}),
      ...(pids !== undefined ? { PidsLimit: pids } : {}),
      Ulimits: Object.entries(ulimits).map(([Name, n]) => ({ Name, Soft: n, Hard: n })),
      CapDrop: ["ALL"],
      SecurityOpt: ["no-new-privileges"],
      ReadonlyRootfs: true,
      // mode=1777 rather than uid=: Podman rejects uid= on tmpfs, and both honour the mode.
      Tmpfs: Object.fromEntries(d.tmpfs.map((p) => [p, "rw,nosuid,nodev,mode=1777"])),
      NetworkMode: spec.network || "none",
      Init: d.init,
    },
  };
}

/** Why a container stopped, in words. */
function reasonOf(state: Docker.ContainerInspectInfo["State"]): string | undefined {
  if (state.Running) return undefined;
  if (state.OOMKilled) return "out of memory";
  if (state.Error) return `failed: ${state.Error}`;
  if (state.Status === "created") return "never started";
  if (state.ExitCode === 137 || state.ExitCode === 143) return "killed";
  return `exited with code ${state.ExitCode}`;
}

/** Reads a container's state, limits and isolation settings back from the engine. */
export function statusOf(info: Docker.ContainerInspectInfo): SandboxStatus {
  const hc = info.HostConfig;
  const reason = reasonOf(info.State);
  const limits: SandboxStatus["limits"] = {};
  if (hc.Memory) limits.memoryBytes = hc.Memory;
  if (hc.NanoCpus) limits.cpus = hc.NanoCpus / 1e9;
  if (hc.PidsLimit && hc.PidsLimit > 0) limits.pids = hc.PidsLimit;
  return {
    running: info.State.Running,
    ...(info.State.Running ? {} : { exitCode: info.State.ExitCode }),
    ...(info.State.Running && info.State.Paused ? { paused: true } : {}),
    oomKilled: info.State.OOMKilled,
    ...(reason !== undefined ? { reason } : {}),
    limits,
    labels: info.Config.Labels ?? {},
    user: info.Config.Labels?.[LABEL_USER] ?? info.Config.User,
    ...(hc.NetworkMode ? { network: hc.NetworkMode } : {}),
    readOnlyRootfs: hc.ReadonlyRootfs ?? false,
    capDrop: (hc.CapDrop ?? []) as string[],
    noNewPrivileges: ((hc.SecurityOpt ?? []) as string[]).some((o) =>
      /^no-new-privileges(?:[:=]true)?$/.test(o),
    ),
  };
}

/** The status of a container the engine no longer has. */
export function goneStatus(labels: Record<string, string>): SandboxStatus {
  return { running: false, oomKilled: false, reason: "removed", limits: {}, labels };
}
