// What every view shares: the API client, and hooks for the common ways views read it.
import { createContext } from "preact";
import { useContext, useEffect, useState } from "preact/hooks";
import type { Orchestrator } from "./api.ts";
import { aborted, errorText } from "./errors.ts";
import { sleep } from "./follow.ts";

/** The Orchestrator client of this tab (provided by App). */
export const ApiContext = createContext<Orchestrator | undefined>(undefined);

/** The Orchestrator client; only inside App. */
export function useApi(): Orchestrator {
  const api = useContext(ApiContext);
  if (!api) throw new Error("useApi outside ApiContext");
  return api;
}

/** What a polled read holds: the last answer and the last error (cleared by a success). */
export interface Polled<T> {
  value: T | undefined;
  error: string | undefined;
}

/**
 * Calls `read` now and every `everyMs` while the component is shown (and `deps` are the
 * same); a new call starts only after the previous one ended.
 */
export function usePoll<T>(
  read: (signal: AbortSignal) => Promise<T>,
  everyMs: number,
  deps: unknown[],
): Polled<T> {
  const [state, setState] = useState<Polled<T>>({ value: undefined, error: undefined });
  useEffect(() => {
    const stop = new AbortController();
    const { signal } = stop;
    (async () => {
      while (!signal.aborted) {
        try {
          const value = await read(signal);
          if (!signal.aborted) setState({ value, error: undefined });
        } catch (e) {
          if (!aborted(e, signal)) setState((s) => ({ ...s, error: errorText(e) }));
        }
        await sleep(everyMs, signal);
      }
    })().catch(() => undefined);
    return () => stop.abort();
  }, deps);
  return state;
}

/** The time now, updated every `everyMs` (for ages and running durations). */
export function useNow(everyMs = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(timer);
  }, [everyMs]);
  return now;
}
