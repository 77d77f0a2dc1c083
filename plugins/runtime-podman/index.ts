/**
 * Podman through its Docker-compatible API, with dockerode. Why the compat API rather than
 * libpod's own: it is one code path with the docker backend (create/exec/inspect/stats/
 * wait/list map one-to-one, and the same conformance suite runs on both), dockerode and its
 * types already speak it, and Podman 4 serves both APIs on the same socket. What libpod's
 * API adds (pods, rootless idmaps, auto short-name resolution) Conductor does not need;
 * the compat differences that matter are handled here: Podman needs explicit ulimits on
 * this kind of machine, short image names live under localhost/, Podman 4 never
 * reports OOMKilled (read from the kernel log instead), and a container's end is waited for
 * with libpod's wait (libpodWait).
 */
import path from "node:path";
import type Docker from "dockerode";
import type { RuntimeBackend } from "../runtime.ts";
import { createEngineBackend } from "../runtime-docker/engine.ts";
import { oomKilledInKernelLog } from "./oom.ts";

/**
 * Ulimits Podman containers get unless the spec names them. Without explicit ones Podman
 * asks for its own maximums and the container fails to start on hosts whose hard limits
 * are lower ("error setting rlimit type 7"). nproc counts every process and thread of the
 * uid on the host (no user namespace): keep it well above agents × threads per agent.
 */
export const PODMAN_DEFAULT_ULIMITS: Readonly<Record<string, number>> = {
  nofile: 4096,
  nproc: 16384,
};

/** Rootful Podman's API socket. */
export const ROOTFUL_PODMAN_SOCKET = "/run/podman/podman.sock";

/** Options of the podman backend; the caller passes what it read (nothing here reads process.env). */
export interface PodmanBackendOptions {
  /** The API socket: runtime.socket from config. Else discovered from uid / xdgRuntimeDir. */
  socketPath?: string;
  /** $XDG_RUNTIME_DIR of the user running rootless Podman. */
  xdgRuntimeDir?: string;
  /** The AgentHost's uid (process.getuid()): 0 means rootful Podman. */
  uid?: number;
  /** Ulimits every container gets unless its spec sets the same name (PODMAN_DEFAULT_ULIMITS). */
  defaultUlimits?: Record<string, number>;
  /** Run Podman's init (catatonit) as PID 1; off by default (the image's entrypoint reaps). */
  init?: boolean;
}

/**
 * Where Podman's API socket is: the given one; rootful for uid 0 (or no uid known);
 * else the rootless one under XDG_RUNTIME_DIR (default /run/user/<uid>).
 */
export function podmanSocketPath(opts: PodmanBackendOptions): string {
  if (opts.socketPath) return opts.socketPath;
  if (opts.uid === 0 || (opts.uid === undefined && !opts.xdgRuntimeDir))
    return ROOTFUL_PODMAN_SOCKET;
  const runtimeDir = opts.xdgRuntimeDir ?? `/run/user/${opts.uid}`;
  return path.join(runtimeDir, "podman", "podman.sock");
}

/**
 * Waits for a container's end with libpod's own wait (`POST /v4.0.0/libpod/containers/{id}/
 * wait?condition=stopped&condition=exited`; the body is the exit code, 404 once the container
 * is gone). The Docker-compatible wait makes Podman 4.3 query the OCI runtime several times a
 * second for as long as a call waits: about a third of a core for each agent watched, on the
 * engine's side (`npm run bench:containers`); libpod's costs next to nothing.
 */
export function libpodWait(docker: Docker, id: string, abortSignal: AbortSignal): Promise<unknown> {
  return new Promise((resolve, reject) => {
    docker.modem.dial(
      {
        path: `/v4.0.0/libpod/containers/${encodeURIComponent(id)}/wait?`,
        method: "POST",
        options: { condition: ["stopped", "exited"] },
        abortSignal,
        statusCodes: { 200: true, 404: "no such container", 500: "server error" },
      },
      (error, data) => (error ? reject(error) : resolve(data)),
    );
  });
}

/** Short names (no registry part) that Podman keeps under localhost/. */
function localhostAlias(image: string): string[] {
  const first = image.split("/")[0] ?? "";
  const hasRegistry =
    image.includes("/") && (first.includes(".") || first.includes(":") || first === "localhost");
  return hasRegistry ? [] : [`localhost/${image}`];
}

/** The Podman backend: the docker backend's implementation over Podman's compat API. */
export function createPodmanBackend(opts: PodmanBackendOptions = {}): RuntimeBackend {
  const socketPath = podmanSocketPath(opts);
  return createEngineBackend({
    runtimeName: "podman",
    engineLabel: "Podman",
    socketPath,
    startHint: `start it with \`podman system service --time=0 unix://${socketPath}\` (or \`bash deploy/engines/start-engines.sh\`) or set runtime.socket`,
    init: opts.init ?? false,
    defaultUlimits: opts.defaultUlimits ?? PODMAN_DEFAULT_ULIMITS,
    imageAliases: localhostAlias,
    detectOom: (id) => oomKilledInKernelLog(id),
    waitForContainer: libpodWait,
  });
}
