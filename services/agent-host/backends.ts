import path from "node:path";
import { pathToFileURL } from "node:url";
import { missingMethods, type RuntimeBackend } from "../../plugins/runtime.ts";
import { createProcessBackend } from "../../plugins/runtime-process/index.ts";
import { resolveClaudePath } from "../shared/claude-path.ts";
import type { Config } from "../shared/config.ts";

/** Builds a backend from the configuration. */
export type BackendFactory = (config: Config) => RuntimeBackend | Promise<RuntimeBackend>;

/** A runtime that could not be loaded or does not implement the contract. */
export class BackendLoadError extends Error {
  override name = "BackendLoadError";
}

/**
 * The built-in runtimes, registered explicitly (no import side effects). Container plugins
 * are imported lazily, so the process backend loads no engine client.
 */
export function builtinBackends(): Map<string, BackendFactory> {
  return new Map<string, BackendFactory>([
    [
      "process",
      (c) =>
        createProcessBackend({
          stateDir: path.join(c.storage.data_dir, "sandboxes"),
          sandbox: c.runtime.process_sandbox,
          // The CLI's own folder (its binary and what it ships beside it), read-only.
          readOnlyPaths: [
            path.dirname(resolveClaudePath(c.agent.claude_path)),
            ...c.runtime.read_only_paths,
          ],
        }),
    ],
    [
      "docker",
      async (c) => {
        const docker = await import("../../plugins/runtime-docker/index.ts");
        const socketPath = c.runtime.socket || docker.socketFromDockerHost(c.runtime.docker_host);
        return docker.createDockerBackend(socketPath ? { socketPath } : {});
      },
    ],
    [
      "podman",
      async (c) => {
        const { createPodmanBackend } = await import("../../plugins/runtime-podman/index.ts");
        return createPodmanBackend({
          ...(c.runtime.socket ? { socketPath: c.runtime.socket } : {}),
          ...(c.runtime.xdg_runtime_dir ? { xdgRuntimeDir: c.runtime.xdg_runtime_dir } : {}),
          uid: process.getuid?.() ?? 0,
        });
      },
    ],
  ]);
}

/**
 * The runtime named by `runtime.backend`: a built-in, else a module (npm package or path)
 * whose default export or `createBackend(config)` gives a RuntimeBackend.
 */
export async function loadBackend(
  config: Config,
  registry = builtinBackends(),
): Promise<RuntimeBackend> {
  const name = config.runtime.backend;
  const builtin = registry.get(name);
  if (builtin) return builtin(config);
  const specifier =
    name.startsWith(".") || name.startsWith("/") ? pathToFileURL(path.resolve(name)).href : name;
  let mod: Record<string, unknown>;
  try {
    mod = (await import(specifier)) as Record<string, unknown>;
  } catch (cause) {
    throw new BackendLoadError(
      `runtime.backend "${name}" is not built in (${[...registry.keys()].join(", ")}) and could not be loaded as a module: ${(cause as Error).message}`,
      { cause },
    );
  }
  const factory = mod["createBackend"] ?? mod["default"];
  const candidate: unknown =
    typeof factory === "function" ? await (factory as BackendFactory)(config) : factory;
  const missing = missingMethods(candidate);
  if (missing.length > 0) {
    throw new BackendLoadError(
      `runtime.backend "${name}" does not implement the runtime plugin interface (plugins/runtime.ts): missing ${missing.join(", ")}`,
    );
  }
  return candidate as RuntimeBackend;
}
