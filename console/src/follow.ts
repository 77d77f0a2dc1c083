// Live views read server streams that may break (a restart, a network blip, a reader that
// fell behind): this reopens them with backoff until the view closes.
import { aborted } from "./errors.ts";

/** Backoff between reopenings, in ms: from `first`, doubling, at most `max`. */
export interface Backoff {
  first: number;
  max: number;
}

/** The views' backoff: from 250 ms, doubling, at most 8 s; reset after a message. */
export const BACKOFF_MS: Backoff = { first: 250, max: 8_000 };

/** What `follow` reports as it goes. */
export interface FollowHandlers<T> {
  /** Each message of each stream, in order. */
  message(m: T): void;
  /** The stream broke with `e`; the next try is in `retryMs`. */
  broken?(e: unknown, retryMs: number): void;
}

/**
 * Opens `open()` and reads it; when it ends with an error, waits (backoff) and opens it
 * again, until `signal` aborts. A stream that ends cleanly ends `follow` (WatchTask ends
 * when its task has). `open` is called afresh each time, so it can resume where it left off.
 */
export async function follow<T>(
  open: (signal: AbortSignal) => AsyncIterable<T>,
  handlers: FollowHandlers<T>,
  signal: AbortSignal,
  backoff: Backoff = BACKOFF_MS,
): Promise<void> {
  let wait = backoff.first;
  while (!signal.aborted) {
    try {
      for await (const m of open(signal)) {
        wait = backoff.first;
        handlers.message(m);
      }
      return;
    } catch (e) {
      if (aborted(e, signal)) return;
      handlers.broken?.(e, wait);
      await sleep(wait, signal);
      wait = Math.min(wait * 2, backoff.max);
    }
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
