import { accessSync, constants } from "node:fs";

/**
 * The V8 heap settings the services (`up`, `orchestrator`, `agent-host`, `broker`) run with:
 * - a young generation of 8 MiB semi-spaces, where Node 24 lets it grow to a new space of
 *   128 MiB on a machine with 24 GB (V8 sizes it by the heap limit, itself by the memory): under
 *   load, a larger one promoted more of the RPC layer's short-lived objects into the old
 *   generation and left more request buffers to malloc;
 * - an old generation that grows by half its live size between full collections, not by up to
 *   four times (V8's heap_growing_percent; its default grows more the faster allocation is).
 *
 * Measured with 32 callers submitting 10,000 tasks to an Orchestrator (2 cores): RSS 366 MiB
 * with Node's defaults and still growing, 170 MiB and flat with these, at the same submit rate;
 * garbage collection took 15% of its time against 10% (CPU profiles of 3,000 submits).
 * V8 does not give the memory back on its own once the load stops (its memory reducer waits for
 * a low allocation rate it only measures at a collection).
 */
export const SERVICE_NODE_FLAGS = ["--max-semi-space-size=8", "--heap-growing-percent=50"];

/**
 * Starts this command again on the same Node with SERVICE_NODE_FLAGS, in this process
 * (`process.execve`: the same pid, so a supervisor's signals, a kill -9 and the ready line on
 * stdout reach the service as before). Only a Node started plainly is started again: one given
 * flags of its own (on its command line or in NODE_OPTIONS: an operator's heap flags, but also
 * preloads and `--inspect`, which would run twice, or the permission model, which forbids it)
 * runs as it is; so does one a parent talks to over an IPC channel (`fork()`: the channel would
 * not survive), one whose environment holds a value Node could not read as UTF-8 (it would not
 * pass it on byte for byte), and one whose Node binary is gone. Returns when it does not start
 * again (also where Node has no `process.execve`).
 */
export function restartWithServiceHeap(env: Record<string, string | undefined>): void {
  if (process.execArgv.length > 0 || (env["NODE_OPTIONS"] ?? "").trim() !== "") return;
  if (process.channel || Object.values(env).some((v) => v?.includes("\uFFFD"))) return;
  try {
    accessSync(process.execPath, constants.X_OK);
  } catch {
    return;
  }
  const clean = Object.fromEntries(
    Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined),
  );
  process.execve?.(
    process.execPath,
    [process.execPath, ...SERVICE_NODE_FLAGS, ...process.argv.slice(1)],
    clean,
  );
}
