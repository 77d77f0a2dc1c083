import { readFileSync } from "node:fs";
import path from "node:path";

let version: string | undefined;

/** Conductor's version: package.json's `version`, read once. */
export function conductorVersion(): string {
  const file = path.join(import.meta.dirname, "..", "..", "package.json");
  version ??= (JSON.parse(readFileSync(file, "utf8")) as { version: string }).version;
  return version;
}
