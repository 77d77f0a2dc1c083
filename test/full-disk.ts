import { execFileSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { ConnectError, type Client } from "@connectrpc/connect";
import type { OrchestratorService } from "../gen/conductor/v1/orchestrator_pb.js";
import { TaskSpecSchema } from "../gen/conductor/v1/task_pb.js";

/** Whether this process may mount file systems (tests of a full disk need it). */
export const canMount = process.getuid?.() === 0;

/** A small tmpfs of the test's own, to fill up; unmounted and removed by dispose. */
export interface SmallDisk {
  dir: string;
  /** Fills it with one file, 4 KiB at a time (at most 16 MiB); returns a function that frees it. */
  fill(): () => void;
  dispose(): void;
}

/** Mounts a tmpfs of `sizeMiB` on a new temp folder (root only). */
export function mountSmallDisk(sizeMiB: number): SmallDisk {
  const dir = mkdtempSync(path.join(tmpdir(), "conductor-full-"));
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeMiB}m`, "tmpfs", dir]);
  let fillers = 0;
  return {
    dir,
    fill() {
      const file = path.join(dir, `filler-${fillers++}`);
      const fd = openSync(file, "w");
      const chunk = Buffer.alloc(4096, 1);
      try {
        for (let i = 0; i < 4096; i++) writeSync(fd, chunk);
        throw new Error(`${dir} did not fill up with 16 MiB`);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOSPC") throw e;
      } finally {
        closeSync(fd);
      }
      return () => rmSync(file, { force: true });
    },
    dispose() {
      execFileSync("umount", [dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A prompt of about 9 KB, unique to `label`. */
export const bigPrompt = (label: string) => `${label} ${"x".repeat(9_000)}`;

/**
 * Submits large tasks until one is refused (at most 40); returns the refusal and the label of
 * the refused prompt.
 */
export async function submitUntilRefused(client: Client<typeof OrchestratorService>) {
  for (let i = 0; i < 40; i++) {
    const label = `while-full-${i}`;
    try {
      await client.submitTask({ spec: create(TaskSpecSchema, { prompt: bigPrompt(label) }) });
    } catch (e) {
      return { error: ConnectError.from(e), label };
    }
  }
  throw new Error("40 large submits on a full disk were all accepted");
}
