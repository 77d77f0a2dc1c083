import type { TaskStore } from "./store.ts";

/** One fleet-wide spend limit (orchestrator.spend_limits), durations in ms. */
export interface SpendLimit {
  usdPerHour: number;
  /** The tasks it covers: those whose labels include all of these (empty: every task). */
  labels: Record<string, string>;
  /** The "hour" spend is summed over (window_seconds; an hour by default). */
  windowMs: number;
}

/** A limit with what was spent in its window, as last read. */
export interface LimitState {
  limit: SpendLimit;
  /** USD spent in the window by the tasks it covers. */
  spent: number;
  /** While the limit is reached: when the window will allow again (ms since the epoch). */
  releaseAt?: number;
}

/** Longest a read of the windows is used for (the gauge's freshness; new spend reads again). */
const MAX_CACHE_MS = 1000;

/**
 * Fleet-wide admission control: which queued tasks a spend limit holds, and when the window
 * will let them go. Spend is recorded by the store, in the transaction that stores an attempt's
 * result; this reads one sum per limit, again only when spend was recorded, a held limit's
 * window allows again, or a second has passed.
 */
export class SpendLimits {
  readonly limits: readonly SpendLimit[];
  private readonly store: TaskStore;
  private cached: { version: number; until: number; states: LimitState[] } | undefined;

  constructor(limits: readonly SpendLimit[], store: TaskStore) {
    this.limits = limits;
    this.store = store;
  }

  /** Every limit with its window's spend now. */
  states(now: number): LimitState[] {
    const c = this.cached;
    if (c && c.version === this.store.spendVersion && now < c.until) return c.states;
    const states = this.limits.map((limit) => this.read(limit, now));
    const releases = states.flatMap((s) => (s.releaseAt !== undefined ? [s.releaseAt] : []));
    const until = Math.min(now + MAX_CACHE_MS, ...releases);
    this.cached = { version: this.store.spendVersion, until, states };
    return states;
  }

  /** The reached limits that cover a task with these labels (none: it may start). */
  holding(labels: Record<string, string>, now: number): LimitState[] {
    if (this.limits.length === 0) return [];
    return this.states(now).filter((s) => s.releaseAt !== undefined && covers(s.limit, labels));
  }

  /** Whether a reached limit covers every task (nothing may start). */
  holdsAll(now: number): boolean {
    return this.holding({}, now).length > 0;
  }

  /** When the first reached limit allows again: the scheduler looks then. */
  nextRelease(now: number): number | undefined {
    if (this.limits.length === 0) return undefined;
    const releases = this.states(now).flatMap((s) => (s.releaseAt ? [s.releaseAt] : []));
    return releases.length > 0 ? Math.min(...releases) : undefined;
  }

  private read(limit: SpendLimit, now: number): LimitState {
    const since = now - limit.windowMs;
    const { usd } = this.store.windowSpend(limit.labels, since);
    if (usd < limit.usdPerHour) return { limit, spent: usd };
    const last = this.store.spendReleasedBy(limit.labels, since, limit.usdPerHour);
    // At `last + windowMs` that spend is out of the window (it holds what is after now - window).
    return { limit, spent: usd, releaseAt: (last ?? now) + limit.windowMs };
  }
}

/** Whether a limit covers a task with these labels. */
export function covers(limit: SpendLimit, labels: Record<string, string>): boolean {
  return Object.entries(limit.labels).every(([k, v]) => labels[k] === v);
}

/** A limit as a person reads it: "$5.00/hour for labels team=a", "$0.0100 per 5 s". */
export function limitText(limit: SpendLimit): string {
  const per = limit.windowMs === 3_600_000 ? "/hour" : ` per ${limit.windowMs / 1000} s`;
  const labels = labelsText(limit.labels);
  return `${dollars(limit.usdPerHour)}${per}${labels ? ` for labels ${labels}` : ""}`;
}

/** A limit's labels as one value ("team=a,tier=b"; "" for a fleet-wide one). */
export function labelsText(labels: Record<string, string>): string {
  return Object.entries(labels)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join(",");
}

/**
 * Why the limits hold a task (Task.queue_reason): "spend limit $5.00/hour for labels
 * team=a reached ($5.02 in the last hour); starts when the window allows, about 12:41:07 UTC".
 */
export function heldReason(held: LimitState[]): string {
  const each = held.map((s) => {
    const window = s.limit.windowMs === 3_600_000 ? "hour" : `${s.limit.windowMs / 1000} s`;
    return `spend limit ${limitText(s.limit)} reached (${dollars(s.spent)} in the last ${window})`;
  });
  const at = Math.max(...held.map((s) => s.releaseAt ?? 0));
  const time = new Date(at).toISOString().slice(11, 19);
  return `${each.join("; ")}; starts when the window allows, about ${time} UTC`;
}

/** Dollars with cents, or four places below a dollar: $5.02, $0.0450. */
function dollars(n: number): string {
  return `$${n >= 1 ? n.toFixed(2) : n.toFixed(4)}`;
}
