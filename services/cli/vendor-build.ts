/**
 * Bundles the third-party modules every client command loads (@bufbuild/protobuf,
 * @connectrpc/connect and @connectrpc/connect-node: about 145 small ES modules, most of a client
 * command's start) into one shared chunk and a thin entry file per public specifier, with
 * rolldown. `bin/vendor.js` then resolves those specifiers there: a client command loads about
 * 30 modules instead of about 170. Run by `npm ci` (`prepare`) and `npm run build:vendor`;
 * without it (a production install, no rolldown) the packages load as installed.
 *
 * Writes node_modules/.cache/conductor/vendor/: the files and manifest.json,
 * `{ versions: { package: version }, specifiers: { specifier: file } }`. A package whose
 * installed version differs from the manifest's makes bin/vendor.js ignore the bundle.
 *
 *   node services/cli/vendor-build.ts
 */
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "rolldown";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
/** Where bin/vendor.js looks (the same path is written there). */
const OUT = path.join(ROOT, "node_modules", ".cache", "conductor", "vendor");

/** Every public specifier of the bundled packages (their package.json `exports`), by file name. */
const ENTRIES: Record<string, string> = {
  protobuf: "@bufbuild/protobuf",
  "protobuf-codegenv1": "@bufbuild/protobuf/codegenv1",
  "protobuf-codegenv2": "@bufbuild/protobuf/codegenv2",
  "protobuf-reflect": "@bufbuild/protobuf/reflect",
  "protobuf-wire": "@bufbuild/protobuf/wire",
  "protobuf-wkt": "@bufbuild/protobuf/wkt",
  connect: "@connectrpc/connect",
  "connect-protocol": "@connectrpc/connect/protocol",
  "connect-protocol-connect": "@connectrpc/connect/protocol-connect",
  "connect-protocol-grpc": "@connectrpc/connect/protocol-grpc",
  "connect-protocol-grpc-web": "@connectrpc/connect/protocol-grpc-web",
  "connect-node": "@connectrpc/connect-node",
};
const PACKAGES = ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node"];

/** The version of an installed package, from its package.json. */
function installed(name: string): string {
  const file = path.join(ROOT, "node_modules", name, "package.json");
  return (JSON.parse(readFileSync(file, "utf8")) as { version: string }).version;
}

rmSync(OUT, { recursive: true, force: true });
await build({
  input: ENTRIES,
  cwd: ROOT,
  platform: "node",
  logLevel: "warn",
  output: {
    dir: OUT,
    format: "esm",
    entryFileNames: "[name].mjs",
    chunkFileNames: "[name].mjs",
    codeSplitting: { groups: [{ name: "shared", test: /node_modules/ }] },
  },
});
const manifest = {
  versions: Object.fromEntries(PACKAGES.map((p) => [p, installed(p)])),
  specifiers: Object.fromEntries(Object.entries(ENTRIES).map(([file, s]) => [s, `${file}.mjs`])),
};
writeFileSync(path.join(OUT, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
process.stdout.write(`vendor-build: ${Object.keys(ENTRIES).length} specifiers in ${OUT}\n`);
