import type { RuntimeBackend } from "../runtime.ts";
import { createEngineBackend } from "./engine.ts";

export { createEngineBackend } from "./engine.ts";
export { IMAGE_BUILD_COMMAND } from "./client.ts";
export type { EngineBackendOptions } from "./client.ts";
export { EngineUnreachableError, ImageMissingError } from "./errors.ts";

/** The Docker Engine's socket when neither the config nor DOCKER_HOST names one. */
export const DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock";

/** Options of the docker backend; the caller resolves them (nothing here reads process.env). */
export interface DockerBackendOptions {
  /** The engine's Unix socket: runtime.socket from config, else DOCKER_HOST's unix:// path. */
  socketPath?: string;
  /** The name the backend reports (default "docker"). */
  runtimeName?: string;
  /** Run docker-init as PID 1 (default: when the engine reports an init binary). */
  init?: boolean;
  /** Ulimits every container gets unless its spec sets the same name. */
  defaultUlimits?: Record<string, number>;
}

/**
 * The socket named by a DOCKER_HOST value, for callers that read the environment;
 * undefined for an empty value, and an error for a non-Unix one (tcp:// is not supported).
 */
export function socketFromDockerHost(dockerHost: string | undefined): string | undefined {
  if (!dockerHost) return undefined;
  if (dockerHost.startsWith("unix://")) return dockerHost.slice("unix://".length);
  throw new Error(`DOCKER_HOST=${dockerHost} is not supported: use a unix:// socket`);
}

/** The Docker Engine backend: an agent is a long-lived container, a task an exec into it. */
export function createDockerBackend(opts: DockerBackendOptions = {}): RuntimeBackend {
  const socketPath = opts.socketPath ?? DEFAULT_DOCKER_SOCKET;
  return createEngineBackend({
    runtimeName: opts.runtimeName ?? "docker",
    engineLabel: "the Docker Engine",
    socketPath,
    startHint:
      "start it with `dockerd` (or `bash deploy/engines/start-engines.sh`) or set runtime.socket / DOCKER_HOST",
    init: opts.init ?? "auto",
    ...(opts.defaultUlimits ? { defaultUlimits: opts.defaultUlimits } : {}),
  });
}
