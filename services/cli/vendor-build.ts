/**
 * Bundles the third-party modules every client command loads (@bufbuild/protobuf,
 * @connectrpc/connect and @connectrpc/connect-node: about 145 small ES modules, most of a client
 * command's start) into one shared chunk and a thin entry file per public specifier, with
 * rolldown. `bin/vendor.js` then resolves those specifiers there: a client command loads about
 * 30 modules instead of about 170. Run by `npm ci` (`prepare`) and `npm run build:vendor`;
 * without it (a production install, no rolldown) the packages load as installed.
 *
 * Writes node_modules/.cache/conductor/vendor/: the files and manifest.json,
 * `{ versions: { package: version }, specifiers: { specifier: file }, bytes: { file: size } }`,
 * built in a folder of its own and then put in place, so a command starting meanwhile sees the
 * old bundle, none, or the new one. bin/vendor.js ignores a bundle whose packages are installed
 * at other versions or whose files are not the size they were built.
 *
 *   node services/cli/vendor-build.ts
 */
import { readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "rolldown";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
/** Where bin/vendor.js looks (its useVendorBundle names the same folder). */
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
/** The packages bundled (bin/vendor.js PACKAGES: a manifest naming others is ignored). */
const PACKAGES = ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node"];

/** The version of an installed package, from its package.json. */
function installed(name: string): string {
  const file = path.join(ROOT, "node_modules", name, "package.json");
  return (JSON.parse(readFileSync(file, "utf8")) as { version: string }).version;
}

const work = `${OUT}.${process.pid}`;
rmSync(work, { recursive: true, force: true });
await build({
  input: ENTRIES,
  cwd: ROOT,
  platform: "node",
  logLevel: "warn",
  output: {
    dir: work,
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
const bytes = Object.fromEntries(
  readdirSync(work).map((f) => [f, statSync(path.join(work, f)).size]),
);
writeFileSync(
  path.join(work, "manifest.json"),
  JSON.stringify({ ...manifest, bytes }, null, 2) + "\n",
);
// Another build may put its folder in place between the removal and the rename: a few tries.
for (let attempt = 1; ; attempt++) {
  rmSync(OUT, { recursive: true, force: true });
  try {
    renameSync(work, OUT);
    break;
  } catch (e) {
    if (attempt === 3) throw e;
  }
}
process.stdout.write(`vendor-build: ${Object.keys(ENTRIES).length} specifiers in ${OUT}\n`);
