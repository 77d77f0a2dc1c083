// Resolves the client's third-party packages to their bundle (services/cli/vendor-build.ts) when
// it was built for the versions installed: a command then loads a few modules instead of ~145.
// CONDUCTOR_VENDOR_BUNDLE=0 loads the packages as installed instead.
import { readdirSync, readFileSync, realpathSync } from "node:fs";
import path from "node:path";
import module from "node:module";
import { URL } from "node:url";

/** The packages the bundle holds: a manifest must name exactly these (vendor-build.ts PACKAGES). */
const PACKAGES = ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node"];
/** Conductor's folders that import the bundled packages and hold no node_modules of their own. */
const OWN = ["bin", "gen", "services"];
/** A file of the bundle: a plain name in its folder, nothing else. */
const FILE = /^[a-z0-9-]+\.mjs$/;

/**
 * The bundle at `dir`, read whole and checked: for each specifier, the file URL it loads from
 * and the text of every file by URL. Undefined — the packages load as installed — when there is
 * no bundle; its manifest is not the shape vendor-build.ts writes (its specifiers of the bundled
 * packages only, its sizes of every file there); a package is installed at another version than
 * it was built from, or linked, itself or its scope (`npm link`: its code is not what was
 * bundled); or a file is missing, extra or not the size the manifest says (cut, or half-written
 * by a build running meanwhile). Never throws.
 * @param {URL} dir
 * @returns {{ urls: Map<string, string>, sources: Map<string, Buffer> } | undefined}
 */
export function readBundle(dir) {
  try {
    const manifest = JSON.parse(readFileSync(new URL("manifest.json", dir), "utf8"));
    const { versions, specifiers, bytes } = manifest;
    if (Object.keys(versions).sort().join() !== [...PACKAGES].sort().join()) return undefined;
    const installed = realpathSync(new URL("../../../", dir));
    for (const name of PACKAGES) {
      const pkg = new URL(`../../../${name}`, dir);
      // Linked in (the package or its scope): not the code that was bundled.
      if (realpathSync(pkg) !== path.join(installed, name)) return undefined;
      const { version } = JSON.parse(readFileSync(new URL(`${pkg.href}/package.json`), "utf8"));
      if (version !== versions[name]) return undefined;
    }
    // Every file of the bundle, each the size it was built: one left out would load unchecked.
    const files = readdirSync(dir).filter((f) => f !== "manifest.json");
    if (files.sort().join() !== Object.keys(bytes).sort().join()) return undefined;
    const sources = new Map();
    for (const [file, size] of Object.entries(bytes)) {
      if (!FILE.test(file)) return undefined;
      const text = readFileSync(new URL(file, dir));
      if (text.length !== size) return undefined;
      sources.set(new URL(file, dir).href, text);
    }
    const urls = new Map();
    for (const [specifier, file] of Object.entries(specifiers)) {
      const url = new URL(file, dir).href;
      if (!PACKAGES.includes(packageOf(specifier)) || !sources.has(url)) return undefined;
      urls.set(specifier, url);
    }
    return urls.size > 0 ? { urls, sources } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Makes this process load the bundle for an import of a bundled specifier that resolves to the
 * installed package at the top of node_modules: at once from Conductor's own code (OWN: no
 * node_modules of their own), by Node's resolution from elsewhere (a plugin's own copy, at
 * another version, stays its own). The bundle's text is the one checked when it was read (a
 * later change on disk is not seen). Does nothing with CONDUCTOR_VENDOR_BUNDLE=0 or without a
 * usable bundle.
 * @param {URL} dir where services/cli/vendor-build.ts writes the bundle
 */
export function useVendorBundle(
  dir = new URL("../node_modules/.cache/conductor/vendor/", import.meta.url),
) {
  if (process.env["CONDUCTOR_VENDOR_BUNDLE"] === "0") return;
  const bundle = readBundle(dir);
  if (!bundle) return;
  const root = new URL("../../../../", dir).href;
  const own = OWN.map((folder) => `${root}${folder}/`);
  module.registerHooks({
    resolve(specifier, context, next) {
      const parent = context.parentURL ?? "";
      // The bundle's own imports (./shared.mjs): its checked text, never the disk again.
      if (bundle.sources.has(parent) && specifier.startsWith("./")) {
        const url = new URL(specifier, parent).href;
        if (bundle.sources.has(url)) return { url, format: "module", shortCircuit: true };
      }
      const url = bundle.urls.get(specifier);
      if (url === undefined) return next(specifier, context);
      if (own.some((folder) => parent.startsWith(folder)))
        return { url, format: "module", shortCircuit: true };
      const resolved = next(specifier, context);
      const top = resolved.url.startsWith(`${root}node_modules/${packageOf(specifier)}/`);
      return top ? { url, format: "module", shortCircuit: true } : resolved;
    },
    load(url, context, next) {
      const source = bundle.sources.get(url);
      return source === undefined
        ? next(url, context)
        : { source, format: "module", shortCircuit: true };
    },
  });
}

/** The package a specifier names: `@scope/name` of `@scope/name/sub/path`. */
function packageOf(specifier) {
  return specifier.split("/").slice(0, 2).join("/");
}
