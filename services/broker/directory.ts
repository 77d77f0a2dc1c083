import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { BrokerAgentSchema, type BrokerAgent } from "../../gen/conductor/v1/broker_pb.js";
import { StorageFull } from "../shared/errors.ts";
import { assertOpen, type BrokerCore } from "./core.ts";
import { ORCHESTRATOR_ID, type Identity } from "./credentials.ts";
import { InvalidInputError, NotAllowedError, UnknownReceiverError } from "./errors.ts";
import { Topics } from "./topics.ts";
import { checkAgentId, checkTopics } from "./validate.ts";

/**
 * Who the Broker knows (agents messages can be sent to) and who is a member of which topic:
 * durable in the store, mirrored in memory. An agent becomes known when the Orchestrator
 * registers it or when it first calls.
 */
export class Directory {
  readonly topics = new Topics();
  private readonly known = new Set<string>([ORCHESTRATOR_ID]);
  private readonly core: BrokerCore;

  /** Loads the known agents and topic memberships from the store. */
  constructor(core: BrokerCore) {
    this.core = core;
    for (const id of core.store.agents()) this.known.add(id);
    for (const s of core.store.subscriptions()) this.topics.add(s.agent_id, [s.topic]);
  }

  /** How many agents are known (the Orchestrator aside). */
  get agents(): number {
    return this.known.size - 1;
  }

  /**
   * Notes that an identity called; the first call of an unknown agent makes it known. On a
   * full disk the caller stays unknown (no one can send to it yet) but its call goes on:
   * reads never need the disk. A known caller costs no write and no wait (undefined).
   */
  see(caller: Identity): Promise<void> | undefined {
    this.core.mail.inbox(caller.id).lastSeen = this.core.clock();
    return this.known.has(caller.id) ? undefined : this.record(caller);
  }

  /**
   * `see` for a call that writes anyway: a new agent's record goes into that call's own
   * commit (one disk sync, not two). The write to add and what to do once it is committed;
   * undefined for a known caller.
   */
  seeWithin(caller: Identity): { write: () => void; applied: () => void } | undefined {
    this.core.mail.inbox(caller.id).lastSeen = this.core.clock();
    if (this.known.has(caller.id)) return undefined;
    const now = this.core.clock();
    return {
      write: () => void this.core.store.addAgent(caller.id, now),
      applied: () => void this.known.add(caller.id),
    };
  }

  private async record(caller: Identity): Promise<void> {
    const now = this.core.clock();
    try {
      await this.core.store.commit(
        () => this.core.store.addAgent(caller.id, now),
        () => this.known.add(caller.id),
      );
    } catch (e) {
      if (!(e instanceof StorageFull)) throw e;
      this.core.opts.log.warn("could not record a new agent: the disk is full", {
        agent_id: caller.id,
        error: e,
      });
    }
  }

  /** A receiver that is known, or NOT_FOUND. */
  knownReceiver(receiver: string): string {
    const id = checkAgentId(receiver, "receiver");
    if (!this.known.has(id)) throw new UnknownReceiverError(id);
    return id;
  }

  /** Makes the caller a member of topics it named (only the Orchestrator gets here with any). */
  async join(agentId: string, topics: string[]): Promise<void> {
    if (topics.length === 0) return;
    await this.core.store.commit(
      () => this.core.store.subscribe(agentId, topics),
      () => this.topics.add(agentId, topics),
    );
  }

  /**
   * Makes an agent known before its first call, and a member of topics (the only way an
   * agent becomes one). Orchestrator only.
   */
  async register(caller: Identity, agentId: string, topics: string[]): Promise<void> {
    assertOpen(this.core);
    if (!caller.orchestrator) {
      throw new NotAllowedError(`only the Orchestrator may register agents, not "${caller.id}"`);
    }
    const id = checkAgentId(agentId, "agent_id");
    if (id === ORCHESTRATOR_ID) throw new InvalidInputError(`"${ORCHESTRATOR_ID}" is reserved`);
    const names = checkTopics(topics);
    const now = this.core.clock();
    await this.core.store.commit(
      () => {
        this.core.store.addAgent(id, now);
        this.core.store.subscribe(id, names);
      },
      () => {
        this.known.add(id);
        this.topics.add(id, names);
      },
    );
  }

  /** Leaves topics; the Orchestrator may take any agent out of topics. */
  async unsubscribe(caller: Identity, input: { topics: string[]; agentId: string }): Promise<void> {
    assertOpen(this.core);
    const agentId = input.agentId ? checkAgentId(input.agentId, "agent_id") : caller.id;
    this.topics.checkMayRemove(caller, agentId);
    const names = checkTopics(input.topics);
    await this.see(caller);
    await this.core.store.commit(
      () => this.core.store.unsubscribe(agentId, names),
      () => this.topics.remove(agentId, names),
    );
  }

  /** Every identity messages can be sent to, with its inbox depth and topics. */
  async list(caller: Identity): Promise<BrokerAgent[]> {
    assertOpen(this.core);
    await this.see(caller);
    const topicsOf = this.topics.byAgent();
    return [...this.known].sort().map((id) => {
      const inbox = this.core.mail.inbox(id);
      return create(BrokerAgentSchema, {
        id,
        connected: inbox.consumers.size > 0,
        waiting: inbox.items.size,
        topics: topicsOf.get(id) ?? [],
        ...(inbox.lastSeen !== undefined ? { lastSeenTime: timestampFromMs(inbox.lastSeen) } : {}),
      });
    });
  }
}
