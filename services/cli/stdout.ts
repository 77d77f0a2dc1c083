import type { Writable } from "node:stream";

/** The exit code of a command whose reader went away: 128 + SIGPIPE, as a shell reports it. */
export const READER_GONE = 141;

/** Whether `e` is the error of a write to a pipe nobody reads any more (`… | head -1`). */
export function isReaderGone(e: unknown): boolean {
  return (e as NodeJS.ErrnoException | undefined)?.code === "EPIPE";
}

/**
 * Ends the command when a write to `stream` fails: quietly when the reader went away (EPIPE,
 * as Unix commands do), with a message and code 1 otherwise. Without it a failed write would
 * crash with a stack trace, or be lost while the command exits 0.
 */
export function guardOutput(
  stream: Writable,
  stderr: Writable,
  exit: (code: number) => void,
): void {
  stream.on("error", (e: Error) => {
    if (isReaderGone(e)) return exit(READER_GONE);
    stderr.write(`conductor: cannot write the output: ${e.message}\n`);
    exit(1);
  });
}

/**
 * Resolves once everything written to `stream` so far has been handed to the system, so that
 * exiting then loses nothing still queued for a pipe (writes to a pipe are asynchronous).
 */
export function flushed(stream: Writable): Promise<void> {
  return new Promise((resolve) => {
    if (stream.destroyed || !stream.writable) return resolve();
    // Write callbacks run in order: this one runs once every earlier write is done.
    stream.write("", () => resolve());
  });
}
