// Who is a member of which topic, and who may do what with a topic. Only the Orchestrator
// makes an agent a member (RegisterAgent, or by naming a topic itself in Subscribe or
// Receive); an agent may leave a topic but never join one, so it reads only the topics it
// was put in. Only members and the Orchestrator may send to a topic.
import type { Identity } from "./credentials.ts";
import { NotAllowedError } from "./errors.ts";

/** Topic memberships in memory (the store keeps them durably). */
export class Topics {
  private readonly members = new Map<string, Set<string>>();

  /** The members of a topic (none when nobody is). */
  membersOf(topic: string): ReadonlySet<string> {
    return this.members.get(topic) ?? new Set();
  }

  isMember(topic: string, agentId: string): boolean {
    return this.members.get(topic)?.has(agentId) ?? false;
  }

  add(agentId: string, topics: Iterable<string>): void {
    for (const t of topics) {
      let set = this.members.get(t);
      if (!set) {
        set = new Set();
        this.members.set(t, set);
      }
      set.add(agentId);
    }
  }

  remove(agentId: string, topics: Iterable<string>): void {
    for (const t of topics) {
      const set = this.members.get(t);
      set?.delete(agentId);
      if (set?.size === 0) this.members.delete(t);
    }
  }

  /** Each member's topics, sorted. */
  byAgent(): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const [topic, ids] of this.members) {
      for (const id of ids) (out.get(id) ?? out.set(id, []).get(id)!).push(topic);
    }
    for (const list of out.values()) list.sort();
    return out;
  }

  /**
   * The topics of `names` the caller is not yet a member of, to be joined: only the
   * Orchestrator joins by naming one; an agent naming one it is not in is PERMISSION_DENIED.
   */
  toJoin(caller: Identity, names: string[]): string[] {
    const fresh = names.filter((t) => !this.isMember(t, caller.id));
    if (fresh.length > 0 && !caller.orchestrator) {
      throw new NotAllowedError(
        `"${caller.id}" is not a member of topic "${fresh[0]}": only the Orchestrator makes agents members of topics (RegisterAgent), and topic messages then come to the member's inbox by themselves (list_agents shows each agent's topics)`,
      );
    }
    return fresh;
  }

  /** Throws unless the caller may send to the topic: a member, or the Orchestrator. */
  checkMaySend(caller: Identity, topic: string): void {
    if (caller.orchestrator || this.isMember(topic, caller.id)) return;
    throw new NotAllowedError(
      `"${caller.id}" may not send to topic "${topic}": only its members and the Orchestrator may, and only the Orchestrator makes agents members (RegisterAgent)`,
    );
  }

  /** Throws unless the caller may take `agentId` out of topics: itself, or the Orchestrator. */
  checkMayRemove(caller: Identity, agentId: string): void {
    if (caller.orchestrator || agentId === caller.id) return;
    throw new NotAllowedError(
      `"${caller.id}" may not take "${agentId}" out of topics: an agent leaves topics itself, or the Orchestrator takes it out`,
    );
  }
}
