import type { EngineBackendOptions } from "../plugins/runtime-docker/client.ts";
import { createEngineBackend } from "../plugins/runtime-docker/engine.ts";
import type { RuntimeBackend } from "../plugins/runtime.ts";

/**
 * The Docker engine backend on a test's own fake engine (an HTTP server on `socketPath`), with
 * `timings` (call timeout, wait round…) short enough for a unit test; no init unless asked.
 */
export function fakeEngineBackend(
  socketPath: string,
  timings: Partial<Pick<EngineBackendOptions, "callTimeoutMs" | "waitRoundMs" | "init">>,
): RuntimeBackend {
  return createEngineBackend({
    runtimeName: "docker",
    engineLabel: "the Docker Engine",
    socketPath,
    startHint: "start it",
    ...timings,
    init: timings.init ?? false,
  });
}
