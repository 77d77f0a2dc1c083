import { expect } from "vitest";
import type { RuntimeBackend, SandboxHandle } from "../plugins/runtime.ts";

/**
 * Runs `/bin/sh -c script` in sandbox `h` (working folder `cwd`, an empty environment) as a run
 * is run, and expects it to exit 0 (its stderr tail is the message otherwise); its stdout lines.
 */
export async function runScript(
  backend: RuntimeBackend,
  h: SandboxHandle,
  cwd: string,
  script: string,
): Promise<string[]> {
  const x = await backend.exec(h, { argv: ["/bin/sh", "-c", script], cwd, env: {} });
  const lines: string[] = [];
  x.onStdoutLine((l) => lines.push(l));
  const status = await x.exited;
  expect(status.code, x.stderrTail()).toBe(0);
  return lines;
}
