import type { AgentOwner } from "../shared/agent-files.ts";

/** Agents one AgentHost gives a uid of their own, from runtime.user up (orchestrator.num_agents' bound). */
export const MAX_AGENT_UIDS = 1000;

/**
 * The uid:gid each agent runs as: runtime.user's, plus the agent's place in start order, so
 * each agent is a user of its own (kernel-level separation from the others, and from any
 * account on the host when runtime.user's range is unused). A replaced agent keeps its uid.
 */
export class AgentUids {
  private readonly offsets = new Map<string, number>();
  private readonly base: AgentOwner;
  private readonly user: string;

  /** `user` is runtime.user, "uid:gid" (or "uid"). */
  constructor(user: string) {
    const [uid, gid] = user.split(":").map(Number);
    this.base = { uid: uid!, gid: gid ?? uid! };
    this.user = user;
  }

  /** The uid:gid agent `id` runs as. */
  userOf(id: string): AgentOwner {
    let offset = this.offsets.get(id);
    if (offset === undefined) {
      offset = this.offsets.size;
      if (offset >= MAX_AGENT_UIDS) {
        throw new Error(
          `no uid left for agent ${id}: one AgentHost runs at most ${MAX_AGENT_UIDS} agents, from runtime.user ${this.user}`,
        );
      }
      this.offsets.set(id, offset);
    }
    return { uid: this.base.uid + offset, gid: this.base.gid + offset };
  }

  /**
   * Who owns what the agent may write, when it is not us: a root AgentHost runs agents as
   * userOf(id) (containers and the process sandbox alike); a non-root one as itself.
   */
  ownerOf(id: string): AgentOwner | undefined {
    return (process.getuid?.() ?? 0) === 0 ? this.userOf(id) : undefined;
  }
}
