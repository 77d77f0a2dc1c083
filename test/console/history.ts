// A task with a long event history, written straight into an Orchestrator's database so a
// browser can open it: the console test and bench/console.ts.
import { writeHistory } from "../watch-load.ts";

/** The text of the `n`th (1-based) output event of a long history. */
export const historyLine = (n: number): string => `history line ${n}`;

/**
 * Writes a task that ran and succeeded after `events` output events ("history line 1" …
 * "history line N"), then its SUCCEEDED state change, into the database under `dataDir`
 * (which nothing else may have open); returns the task's id.
 */
export function writeLongHistory(dataDir: string, events: number): string {
  return writeHistory(dataDir, events, 0, 1024 ** 3, historyLine);
}
