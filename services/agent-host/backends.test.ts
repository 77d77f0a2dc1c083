import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { RUNTIME_METHODS } from "../../plugins/runtime.ts";
import { loadConfig } from "../shared/config.ts";
import { BackendLoadError, loadBackend } from "./backends.ts";

/** Every temp folder the tests make, removed after them. */
const made: string[] = [];
afterAll(() => made.forEach((d) => rmSync(d, { recursive: true, force: true })));
function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

function configFor(backend: string) {
  return loadConfig({ cwd: tempDir("conductor-backends-"), flags: { "runtime.backend": backend } });
}

describe("loadBackend", () => {
  it("gives the built-in process backend by name", async () => {
    const backend = await loadBackend(configFor("process"));
    expect(backend.name).toBe("process");
    expect((await backend.fingerprint()).healthy).toBe(true);
  });

  it("loads a third-party plugin module that exports createBackend", async () => {
    const dir = tempDir("conductor-plugin-");
    const file = path.join(dir, "plugin.mjs");
    const body = RUNTIME_METHODS.map((m) => `${m}: async () => undefined`).join(", ");
    writeFileSync(
      file,
      `export function createBackend(config) { return { name: "acme-" + config.runtime.image, ${body} }; }\n`,
    );
    const backend = await loadBackend(configFor(file));
    expect(backend.name).toBe("acme-conductor-agent:dev");
  });

  it("refuses a module that does not implement the interface, naming what is missing", async () => {
    const dir = tempDir("conductor-plugin-");
    const file = path.join(dir, "half.mjs");
    writeFileSync(file, `export default { name: "half", fingerprint() {}, create() {} };\n`);
    const err = await loadBackend(configFor(file)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendLoadError);
    expect((err as Error).message).toMatch(
      /does not implement the runtime plugin interface.*missing start, exec, stop/,
    );
  });

  it("says which runtimes are built in when a name is neither built in nor a module", async () => {
    const err = await loadBackend(configFor("no-such-runtime-plugin")).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendLoadError);
    expect((err as Error).message).toMatch(
      /"no-such-runtime-plugin" is not built in \(process, docker, podman\)/,
    );
  });
});
