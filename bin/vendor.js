// Resolves the client's third-party packages to their bundle (services/cli/vendor-build.ts) when
// it was built for the versions installed: a command then loads a few modules instead of ~145.
// CONDUCTOR_VENDOR_BUNDLE=0 loads the packages as installed instead.
import { readFileSync } from "node:fs";
import module from "node:module";
import { URL } from "node:url";

/** Where services/cli/vendor-build.ts writes the bundle. */
export const VENDOR_DIR = new URL("../node_modules/.cache/conductor/vendor/", import.meta.url);

/**
 * The bundle's file URL for each specifier it holds, or undefined when there is no bundle at
 * `dir` or one of its packages is installed at another version than it was built from.
 * @param {URL} dir
 * @returns {Map<string, string> | undefined}
 */
export function vendorUrls(dir = VENDOR_DIR) {
  let manifest;
  try {
    manifest = JSON.parse(readFileSync(new URL("manifest.json", dir), "utf8"));
    for (const [name, version] of Object.entries(manifest.versions)) {
      const pkg = new URL(`../../../${name}/package.json`, dir);
      if (JSON.parse(readFileSync(pkg, "utf8")).version !== version) return undefined;
    }
  } catch {
    return undefined;
  }
  return new Map(
    Object.entries(manifest.specifiers).map(([specifier, file]) => [
      specifier,
      new URL(file, dir).href,
    ]),
  );
}

/** Makes every import of a bundled specifier, in this process, load the bundle's file. */
export function useVendorBundle() {
  if (process.env["CONDUCTOR_VENDOR_BUNDLE"] === "0") return;
  const urls = vendorUrls();
  if (!urls) return;
  module.registerHooks({
    resolve(specifier, context, next) {
      const url = urls.get(specifier);
      return url ? { url, format: "module", shortCircuit: true } : next(specifier, context);
    },
  });
}
