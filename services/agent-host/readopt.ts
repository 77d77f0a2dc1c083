import {
  LABEL_HOST,
  LABEL_NODE,
  type RuntimeBackend,
  type SandboxHandle,
  type SandboxSpec,
} from "../../plugins/runtime.ts";
import type { Logger } from "../shared/log.ts";
import { sameSpec, type AgentParts } from "./provision.ts";

/** What taking up an earlier run's sandboxes needs. */
export interface Leftovers {
  backend: RuntimeBackend;
  log: Logger;
  nodeId: string;
  /** This AgentHost instance (LABEL_HOST): another on the machine may share the node name. */
  hostKey: string;
  /** Whether the backend re-attaches sandboxes (capabilities.recover). */
  recover: boolean;
  /** The agents this AgentHost runs now. */
  wanted: Set<string>;
  /** The spec this AgentHost would make for agent `id` now. */
  specOf: (id: string) => SandboxSpec;
}

/**
 * This AgentHost's sandboxes left by an earlier run of it: each wanted agent's one that was
 * made from the spec it would make now and that the backend can re-attach is kept (by agent
 * id); every other one is reaped.
 */
export async function takeUpLeftovers(l: Leftovers): Promise<Map<string, SandboxHandle>> {
  const kept = new Map<string, SandboxHandle>();
  const found = await l.backend.list({ [LABEL_NODE]: l.nodeId, [LABEL_HOST]: l.hostKey });
  for (const h of found) {
    const id = h.agentId;
    let back: SandboxHandle | undefined;
    if (l.recover && l.wanted.has(id) && !kept.has(id) && sameSpec(h, l.specOf(id))) {
      back = await l.backend.recover(h).catch(() => undefined);
    }
    const fields = { sandbox: h.id, agent_id: id };
    if (back) {
      kept.set(id, back);
      l.log.info("re-adopting an agent sandbox left by an earlier agent host", fields);
    } else {
      l.log.warn("reaping an agent sandbox left by an earlier agent host", fields);
      await l.backend.destroy(h);
    }
  }
  return kept;
}

/**
 * Runs `true` in an adopted sandbox before it serves again: it answers (else it is not
 * healthy), and the exec's end ends whatever of the agent's user an earlier run left.
 */
export async function settle(backend: RuntimeBackend, parts: AgentParts): Promise<void> {
  parts.lifeline?.arm();
  try {
    const x = await backend.exec(parts.sandbox, { argv: ["true"], cwd: "/", env: {} });
    const status = await x.exited;
    if (status.code !== 0)
      throw new Error(`exec of true ended with ${status.code ?? status.signal}`);
  } finally {
    parts.lifeline?.cut();
  }
}
