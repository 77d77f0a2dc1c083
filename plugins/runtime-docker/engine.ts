import path from "node:path";
import { LABEL_AGENT } from "../runtime.ts";
import type { RuntimeBackend, SandboxHandle, SandboxSpec, SandboxStatus } from "../runtime.ts";
import { LABEL_USER, checkUser, createOptions, goneStatus, statusOf } from "./container-spec.ts";
import { connectEngine } from "./client.ts";
import type { EngineBackendOptions } from "./client.ts";
import { engineFailure, isNotFound, isUnreachable } from "./errors.ts";
import { startExec } from "./exec.ts";

/** How long one call that should answer at once (inspect, list, remove…) may take. */
const CALL_TIMEOUT_MS = 30_000;
/**
 * How long one round of waiting on a container lasts before its state is read again: an
 * engine that holds a wait open but no longer answers (frozen) is reported (the read rejects)
 * rather than waited on for good.
 */
const WAIT_ROUND_MS = 30_000;

/** A RuntimeBackend over any engine speaking the Docker Engine API, through dockerode. */
export function createEngineBackend(o: EngineBackendOptions): RuntimeBackend {
  const client = connectEngine(o);
  const { docker, fail } = client;
  const closing = new AbortController();
  const waitRoundMs = o.waitRoundMs ?? WAIT_ROUND_MS;
  const callTimeoutMs = o.callTimeoutMs ?? CALL_TIMEOUT_MS;
  /** An abort signal for one call: its timeout (extra ms on top), or this backend closing. */
  const quick = (extraMs = 0) => ({
    abortSignal: AbortSignal.any([AbortSignal.timeout(callTimeoutMs + extraMs), closing.signal]),
  });

  const container = (h: SandboxHandle) => docker.getContainer(h.id);
  const backend: RuntimeBackend = {
    name: o.runtimeName,

    fingerprint: () => client.fingerprint(),

    async create(spec: SandboxSpec) {
      checkUser(spec.user);
      const image = await client.findImage(spec.image, quick().abortSignal);
      // Writable scratch on the read-only root: /tmp and the image's HOME, unless mounted.
      const mounted = new Set(spec.mounts.map((m) => path.resolve(m.sandboxPath ?? m.hostPath)));
      const tmpfs = ["/tmp", image.home ?? "/"].filter(
        (p, i, all) => p !== "/" && all.indexOf(p) === i && !mounted.has(p),
      );
      const opts = createOptions(spec, image.name, {
        init: await client
          .useInit(quick().abortSignal)
          .catch((e: unknown) => fail(e, "reading engine info")),
        tmpfs,
        defaultUlimits: o.defaultUlimits ?? {},
      });
      try {
        const c = await docker.createContainer({ ...opts, ...quick() });
        return { id: c.id, agentId: spec.agentId, labels: opts.Labels ?? {} };
      } catch (e) {
        if (engineFailure(e).statusCode === 409) {
          fail(
            e,
            `creating container ${opts.name}`,
            `: recover or destroy the earlier one (list by ${LABEL_AGENT})`,
          );
        }
        return fail(e, `creating container ${opts.name} from ${image.name}`);
      }
    },

    async start(h) {
      try {
        await container(h).start(quick());
      } catch (e) {
        if (engineFailure(e).statusCode === 304) return; // already running
        // A container that failed to start stays Created: remove it, report why.
        await container(h)
          .remove({ force: true, v: true, ...quick() })
          .catch(() => undefined);
        const rlimit = /rlimit/i.test(engineFailure(e).message)
          ? ": set runtime.ulimits (e.g. nofile 1024, nproc 1024) within the engine's own hard limits"
          : "";
        fail(e, `starting container ${h.id} (removed it)`, rlimit);
      }
    },

    async exec(h, req) {
      try {
        const user = h.labels[LABEL_USER] ?? (await container(h).inspect(quick())).Config.User;
        return await startExec(docker, container(h), req, user, quick().abortSignal);
      } catch (e) {
        return fail(e, `exec in container ${h.id}`);
      }
    },

    async stop(h, graceMs) {
      try {
        const t = Math.max(0, Math.ceil(graceMs / 1000));
        await container(h).stop({ t, ...quick(t * 1000) });
      } catch (e) {
        const s = engineFailure(e).statusCode;
        if (s !== 304 && s !== 404) fail(e, `stopping container ${h.id}`);
      }
    },

    async destroy(h) {
      try {
        await container(h).remove({ force: true, v: true, ...quick() });
      } catch (e) {
        const f = engineFailure(e);
        // Missing, or already being removed: either way it is going.
        if (f.statusCode !== 404 && !(f.statusCode === 409 && /in progress/.test(f.message))) {
          fail(e, `removing container ${h.id}`);
        }
      }
    },

    async inspect(h): Promise<SandboxStatus> {
      try {
        const info = await container(h).inspect(quick());
        const st = statusOf(info);
        if (!st.running && !st.oomKilled && st.exitCode === 137 && o.detectOom?.(info.Id)) {
          return { ...st, oomKilled: true, reason: "out of memory" };
        }
        return st;
      } catch (e) {
        if (isNotFound(e)) return goneStatus(h.labels);
        return fail(e, `inspecting container ${h.id}`);
      }
    },

    async stats(h) {
      try {
        const s = await container(h).stats({ stream: false, ...quick() });
        const m = s.memory_stats as { usage?: number; stats?: Record<string, number> };
        // As `docker stats` shows it: usage less the page cache the kernel can drop.
        const cache = m.stats?.["total_inactive_file"] ?? m.stats?.["inactive_file"] ?? 0;
        return {
          memoryBytes: Math.max(0, (m.usage ?? 0) - cache),
          pids: s.pids_stats?.current ?? 0,
        };
      } catch (e) {
        return fail(e, `reading stats of container ${h.id}`);
      }
    },

    async list(labels) {
      try {
        const found = await docker.listContainers({
          all: true,
          filters: { label: Object.entries(labels).map(([k, v]) => `${k}=${v}`) },
          ...quick(),
        });
        return found.map((c) => ({
          id: c.Id,
          agentId: c.Labels[LABEL_AGENT] ?? "",
          labels: c.Labels,
        }));
      } catch (e) {
        return fail(e, "listing containers");
      }
    },

    async recover(h) {
      try {
        const info = await container(h).inspect(quick());
        if (!info.State.Running) return undefined;
        return { id: info.Id, agentId: h.agentId, labels: info.Config.Labels ?? h.labels };
      } catch (e) {
        if (isNotFound(e)) return undefined;
        return fail(e, `inspecting container ${h.id}`);
      }
    },

    async waitForExit(h, signal) {
      const stopped = AbortSignal.any([signal, closing.signal]);
      for (;;) {
        const round = AbortSignal.any([stopped, AbortSignal.timeout(waitRoundMs)]);
        const call: Promise<unknown> = o.waitForContainer
          ? o.waitForContainer(docker, h.id, round)
          : container(h).wait({ abortSignal: round });
        try {
          await call;
        } catch (e) {
          // Aborted (by the caller or the round's end), the container is gone, or the engine
          // (its connection) is: read its state.
          if (!round.aborted && !isNotFound(e) && !isUnreachable(e)) {
            fail(e, `waiting for container ${h.id}`);
          }
        }
        // Rejects when the engine cannot be reached: the caller learns at once, not never.
        const st = await backend.inspect(h);
        if (!st.running || stopped.aborted) return st;
      }
    },

    async close() {
      closing.abort();
    },
  };
  return backend;
}
