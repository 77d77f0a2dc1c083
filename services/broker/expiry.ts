import { StorageFull } from "../shared/errors.ts";
import type { BrokerCore } from "./core.ts";
import type { Pending } from "./mailroom.ts";

/** How often deletes the disk could not take are tried again. */
const RETRY_MS = 2000;

/**
 * Removing messages from disk once they are gone from memory: those that expired (found by
 * the periodic sweep or while delivering) and acknowledged ones whose delete a full disk
 * refused. A delete that fails is kept and tried again every few seconds and at close, never
 * fatal; until it is written only a restart could bring its messages back (at least once).
 */
export class Expiry {
  private readonly core: BrokerCore;
  private readonly sweeper: NodeJS.Timeout;
  /** Deletes not yet written, by receiver. */
  private readonly unwritten = new Map<string, Set<string>>();
  private retry: NodeJS.Timeout | undefined;
  /** The last write failed (logged once until one succeeds). */
  private failing = false;

  constructor(core: BrokerCore) {
    this.core = core;
    const every = Math.min(60_000, Math.max(1000, core.opts.ttlMs / 4));
    this.sweeper = setInterval(() => {
      this.sweep().catch((e: unknown) => core.opts.log.warn("expiry sweep failed", { error: e }));
    }, every);
    this.sweeper.unref();
  }

  /** Drops expired messages and requests from memory and disk; returns the messages dropped. */
  async sweep(): Promise<number> {
    if (this.core.closing.aborted) return 0;
    const now = this.core.clock();
    const expired: Pending[] = [];
    for (const inbox of this.core.mail.all()) {
      for (const p of inbox.items.values()) if (p.expireAt <= now && !p.acking) expired.push(p);
    }
    for (const p of expired) this.core.mail.remove(p.receiver, [p.id]);
    if (expired.length > 0) {
      this.core.opts.observer?.expired(expired.length);
      this.core.opts.log.info("messages expired", { count: expired.length });
    }
    // What this cannot delete now, the next sweep does (it deletes by expiry time).
    await this.core.store.commit(() => this.core.store.deleteExpired(now));
    return expired.length;
  }

  /** Deletes messages the mailroom found expired (in the background; retried if it fails). */
  forget(expired: Pending[]): void {
    this.core.opts.observer?.expired(expired.length);
    for (const p of expired) this.later(p.receiver, [p.id]);
    this.write();
  }

  /** Keeps acknowledged messages' delete, which the disk refused, to write it later. */
  deleteLater(receiver: string, ids: string[]): void {
    this.later(receiver, ids);
    this.retry ??= setTimeout(() => this.write(), RETRY_MS).unref();
  }

  /** Stops the timers and queues what is unwritten for the store's last commit. */
  close(): void {
    clearInterval(this.sweeper);
    clearTimeout(this.retry);
    this.retry = undefined;
    this.write();
  }

  private later(receiver: string, ids: string[]): void {
    const set = this.unwritten.get(receiver) ?? new Set<string>();
    for (const id of ids) set.add(id);
    this.unwritten.set(receiver, set);
  }

  /** Writes every unwritten delete in one commit; on failure keeps them and tries again later. */
  private write(): void {
    clearTimeout(this.retry);
    this.retry = undefined;
    if (this.unwritten.size === 0) return;
    const batch = [...this.unwritten].map(([receiver, ids]): [string, string[]] => [
      receiver,
      [...ids],
    ]);
    const store = this.core.store;
    store
      .commit(
        () => {
          for (const [receiver, ids] of batch) store.deleteMessages(receiver, ids);
        },
        () => {
          this.failing = false;
          for (const [receiver, ids] of batch) {
            const set = this.unwritten.get(receiver);
            for (const id of ids) set?.delete(id);
            if (set?.size === 0) this.unwritten.delete(receiver);
          }
        },
      )
      .catch((e: unknown) => {
        if (this.core.closing.aborted) return;
        if (!this.failing) {
          const why = e instanceof StorageFull ? "the disk is full" : "the store failed";
          this.core.opts.log.warn(`could not delete messages (${why}); trying again`, { error: e });
        }
        this.failing = true;
        this.retry ??= setTimeout(() => this.write(), RETRY_MS).unref();
      });
  }
}
