import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { ROOT } from "../../test/harness.ts";
// @ts-expect-error: plain JavaScript (bin/ runs on any Node), without declarations
import { vendorUrls } from "../../bin/vendor.js";

const lookup = vendorUrls as (dir?: URL) => Map<string, string> | undefined;

describe("the client's vendor bundle", () => {
  const built = lookup();

  it("was built by npm ci (prepare) for the installed versions", () => {
    expect(built, "no bundle: run npm run build:vendor").toBeDefined();
    expect([...built!.keys()]).toEqual(
      expect.arrayContaining(["@bufbuild/protobuf", "@connectrpc/connect-node"]),
    );
  });

  it("exports from each entry exactly what the package exports", async () => {
    for (const [specifier, url] of built!) {
      const [bundled, installed] = await Promise.all([
        import(url) as Promise<object>,
        import(specifier) as Promise<object>,
      ]);
      expect(Object.keys(bundled).sort(), specifier).toEqual(Object.keys(installed).sort());
    }
  });

  describe("in a folder of its own", () => {
    const root = mkdtempSync(path.join(tmpdir(), "conductor-vendor-"));
    const dir = path.join(root, "node_modules", ".cache", "conductor", "vendor");
    afterAll(() => rmSync(root, { recursive: true, force: true }));
    const install = (version: string) => {
      const pkg = path.join(root, "node_modules", "@bufbuild", "protobuf");
      mkdirSync(pkg, { recursive: true });
      writeFileSync(path.join(pkg, "package.json"), JSON.stringify({ version }));
    };
    const at = pathToFileURL(dir + "/");

    it("is not used when it is missing, or built for another version", () => {
      install("2.0.0");
      expect(lookup(at)).toBeUndefined();
      mkdirSync(dir, { recursive: true });
      const manifest = {
        versions: { "@bufbuild/protobuf": "2.0.0" },
        specifiers: { "@bufbuild/protobuf": "protobuf.mjs" },
      };
      writeFileSync(path.join(dir, "manifest.json"), JSON.stringify(manifest));
      expect(lookup(at)?.get("@bufbuild/protobuf")).toBe(new URL("protobuf.mjs", at).href);
      install("2.0.1");
      expect(lookup(at)).toBeUndefined();
      writeFileSync(path.join(dir, "manifest.json"), "{not json");
      expect(lookup(at)).toBeUndefined();
    });
  });

  /** The files a `conductor tasks` loads, as a hook given by NODE_OPTIONS sees them. */
  function loaded(env: Record<string, string>): string[] {
    const hook = path.join(mkdtempSync(path.join(tmpdir(), "conductor-vendor-hook-")), "h.mjs");
    writeFileSync(
      hook,
      `import module from "node:module";
       module.registerHooks({ load(url, context, next) {
         process.stderr.write("LOADED " + url + "\\n"); return next(url, context); } });`,
    );
    const r = spawnSync(
      process.execPath,
      [
        path.join(ROOT, "bin", "conductor.js"),
        "tasks",
        "--socket",
        path.join(path.dirname(hook), "none.sock"),
      ],
      { encoding: "utf8", env: { ...process.env, ...env, NODE_OPTIONS: `--import ${hook}` } },
    );
    rmSync(path.dirname(hook), { recursive: true, force: true });
    expect(r.stderr).toMatch(/no Conductor is running/);
    return r.stderr
      .split("\n")
      .filter((l) => l.startsWith("LOADED "))
      .map((l) => l.slice(7));
  }

  it("is what a client command loads its gRPC and protobuf packages from", () => {
    const withBundle = loaded({});
    expect(
      withBundle.filter((u) => u.includes("/.cache/conductor/vendor/")).length,
    ).toBeGreaterThan(0);
    expect(withBundle.filter((u) => /node_modules\/@(bufbuild|connectrpc)\//.test(u))).toEqual([]);
    const without = loaded({ CONDUCTOR_VENDOR_BUNDLE: "0" });
    expect(without.filter((u) => u.includes("/.cache/conductor/vendor/"))).toEqual([]);
    expect(without.length).toBeGreaterThan(withBundle.length + 100);
  });
});
