import Docker from "dockerode";
import type { Fingerprint } from "../runtime.ts";
import {
  EngineUnreachableError,
  ImageMissingError,
  engineFailure,
  isNotFound,
  isUnreachable,
} from "./errors.ts";
import { settleEveryCall } from "./modem.ts";

/** How long fingerprint waits for the engine: Podman's info takes seconds on a busy machine. */
const PROBE_TIMEOUT_MS = 15_000;
/** How long a ping may take: a live engine answers it at once (no work behind it). */
const PING_TIMEOUT_MS = 5_000;

/**
 * How long a fingerprint's version and info stand: the probes in between only ping the engine
 * (`GET /_ping`). Podman 4.3 answers /version and /info by asking dpkg for its parts' package
 * versions, about 1.4 s of CPU for the pair here (`npm run bench:containers`), against
 * well under 1 ms for a ping; the AgentHost probes every 5 s.
 */
const DETAIL_TTL_MS = 5 * 60_000;

/** The command that builds the agent image on a machine with no registry. */
export const IMAGE_BUILD_COMMAND = "bash deploy/agent-image/build-offline.sh";

/** How one Docker-API engine (Docker, or Podman's compat API) is reached and set up. */
export interface EngineBackendOptions {
  /** The runtime's name ("docker", "podman"), as the plugin registry knows it. */
  runtimeName: string;
  /** The engine's name in messages ("the Docker Engine"). */
  engineLabel: string;
  socketPath: string;
  /** How a person starts the engine, for the unreachable message. */
  startHint: string;
  /** Whether to run the engine's init as PID 1; "auto": when the engine reports one. */
  init: boolean | "auto";
  /** Ulimits every container gets unless its spec sets the same name. */
  defaultUlimits?: Record<string, number>;
  /** Other names to try for an image the engine does not know as given (Podman: localhost/). */
  imageAliases?: (image: string) => string[];
  /**
   * Whether a container that died of SIGKILL was OOM-killed, for engines that do not say
   * so themselves (Podman 4). Asked only when the engine reports no OOM.
   */
  detectOom?: (containerId: string) => boolean;
  /** Bounds fingerprint's probe of the engine (default 15 s reading its version and info, 5 s a ping). */
  probeTimeoutMs?: number;
  /** How long one call that should answer at once (inspect, create, exec…) may take (default 30 s). */
  callTimeoutMs?: number;
  /** How long waitForExit waits before reading the container's state again (default 30 s). */
  waitRoundMs?: number;
  /**
   * Waits until the container no longer runs: resolves at its end, rejects with the engine's
   * error (404 once it is gone). Default: the Docker API's `POST /containers/{id}/wait`.
   */
  waitForContainer?: (docker: Docker, id: string, abortSignal: AbortSignal) => Promise<unknown>;
}

/** The engine connection and the calls every backend method shares. */
export interface EngineClient {
  docker: Docker;
  /** Rethrows an engine error with a message a person can act on, keeping the cause. */
  fail: (e: unknown, what: string, hint?: string) => never;
  /** Whether to ask for the engine's init as PID 1. */
  useInit: (abortSignal: AbortSignal) => Promise<boolean>;
  /** The image as the engine names it, and its HOME; a clear error when it is missing. */
  findImage: (
    image: string,
    abortSignal: AbortSignal,
  ) => Promise<{ name: string; home: string | undefined }>;
  /** Is the engine there, which version, what it enforces. */
  fingerprint: () => Promise<Fingerprint>;
}

/** What every engine-API backend can do; `limits` also needs the engine's cgroup controllers. */
const CAPABILITIES = {
  limits: true,
  networkIsolation: true,
  image: true,
  runLifeline: true,
  recover: true,
  execMounts: false,
};

/** A call ended by its own timeout (an AbortSignal.timeout), not by the engine's answer. */
function isTimeout(e: unknown): boolean {
  const o = e as { name?: unknown; cause?: { name?: unknown } } | undefined;
  return o?.name === "TimeoutError" || o?.cause?.name === "TimeoutError";
}

/** Connects (lazily: dockerode dials per request) to the engine at o.socketPath. */
export function connectEngine(o: EngineBackendOptions): EngineClient {
  const docker = new Docker({ socketPath: o.socketPath });
  settleEveryCall(docker.modem, o.socketPath);
  // dockerode takes abortSignal on these too; its types leave it out.
  const ask = docker as unknown as {
    ping(o: { abortSignal: AbortSignal }): Promise<unknown>;
    version(o: { abortSignal: AbortSignal }): Promise<Docker.DockerVersion>;
    info(o: { abortSignal: AbortSignal }): Promise<{
      MemoryLimit?: boolean;
      PidsLimit?: boolean;
      CgroupVersion?: string;
      InitBinary?: string;
    }>;
  };
  let initBinary: Promise<boolean> | undefined;
  /** The last healthy fingerprint, and when its version and info were read. */
  let known: { fp: Fingerprint; at: number } | undefined;

  const fail = (e: unknown, what: string, hint = ""): never => {
    if (isUnreachable(e) || isTimeout(e)) {
      const code = isTimeout(e) ? "no answer in time" : (engineFailure(e).code ?? "unreachable");
      throw new EngineUnreachableError(
        `cannot reach ${o.engineLabel} at ${o.socketPath} (${code}): ${o.startHint}`,
        o.socketPath,
        e,
      );
    }
    throw new Error(`${o.runtimeName}: ${what}: ${engineFailure(e).message}${hint}`, { cause: e });
  };
  const useInit = async (abortSignal: AbortSignal) => {
    if (o.init !== "auto") return o.init;
    initBinary ??= ask.info({ abortSignal }).then(
      (i) => Boolean(i.InitBinary),
      (e: unknown) => {
        initBinary = undefined; // ask again next time: the engine may be back
        throw e;
      },
    );
    return initBinary;
  };

  /** `GET /images/{name}/json` (dockerode's image inspect takes no abortSignal). */
  const inspectImage = (name: string, abortSignal: AbortSignal) =>
    new Promise<Docker.ImageInspectInfo>((resolve, reject) => {
      docker.modem.dial(
        {
          path: `/images/${name}/json`, // as dockerode's getImage(name).inspect()
          method: "GET",
          abortSignal,
          statusCodes: { 200: true, 404: "no such image", 500: "server error" },
        },
        (error, data) => (error ? reject(error) : resolve(data as Docker.ImageInspectInfo)),
      );
    });

  const findImage = async (
    image: string,
    abortSignal: AbortSignal,
  ): Promise<{ name: string; home: string | undefined }> => {
    let first: unknown;
    for (const name of [image, ...(o.imageAliases?.(image) ?? [])]) {
      try {
        const info = await inspectImage(name, abortSignal);
        const home = (info.Config.Env ?? []).find((e) => e.startsWith("HOME="))?.slice(5);
        return { name, home };
      } catch (e) {
        if (!isNotFound(e)) fail(e, `inspecting image ${name}`);
        first ??= e;
      }
    }
    throw new ImageMissingError(
      `image "${image}" is not in ${o.engineLabel} at ${o.socketPath} (no image is pulled): ` +
        `build it with \`${IMAGE_BUILD_COMMAND}\` (or set the agent image in config)`,
      image,
      first,
    );
  };

  return {
    docker,
    fail,
    useInit,
    findImage,
    async fingerprint(): Promise<Fingerprint> {
      // Aborted, not just raced, at the bound: a probe of an engine that never answers must
      // not leave its connection open (one every probe, for as long as the engine is away).
      const ping = known !== undefined && Date.now() - known.at < DETAIL_TTL_MS;
      const timeoutMs = o.probeTimeoutMs ?? (ping ? PING_TIMEOUT_MS : PROBE_TIMEOUT_MS);
      const abortSignal = AbortSignal.timeout(timeoutMs);
      try {
        if (known && ping) {
          await ask.ping({ abortSignal });
          return known.fp;
        }
        const [v, info] = await Promise.all([
          ask.version({ abortSignal }),
          ask.info({ abortSignal }),
        ]);
        const limits = info.MemoryLimit !== false && info.PidsLimit !== false;
        const fp = {
          runtime: o.runtimeName,
          healthy: true,
          detail: `${v.Version} (API ${v.ApiVersion}, cgroup v${info.CgroupVersion ?? "?"}) at ${o.socketPath}`,
          capabilities: { ...CAPABILITIES, limits },
        };
        known = { fp, at: Date.now() };
        return fp;
      } catch (e) {
        known = undefined; // read it all again once the engine answers: it may be another one
        const code = abortSignal.aborted
          ? "ETIMEDOUT"
          : (engineFailure(e).code ?? engineFailure(e).message);
        // One that takes the call and does not answer runs, but is hung or overloaded.
        const hint = abortSignal.aborted
          ? `it takes calls but did not answer in ${timeoutMs / 1000} s: it may be hung or overloaded (restart it)`
          : o.startHint;
        return {
          runtime: o.runtimeName,
          healthy: false,
          detail: `cannot reach ${o.engineLabel} at ${o.socketPath} (${code}): ${hint}`,
          capabilities: CAPABILITIES,
        };
      }
    },
  };
}
