import { spawnSync } from "node:child_process";
import {
  cpSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { ROOT } from "../../test/harness.ts";
// @ts-expect-error: plain JavaScript (bin/ runs on any Node), without declarations
import { readBundle } from "../../bin/vendor.js";

type Bundle = { urls: Map<string, string>; sources: Map<string, string> };
const read = readBundle as (dir: URL) => Bundle | undefined;
const VENDOR = path.join(ROOT, "node_modules", ".cache", "conductor", "vendor");
const PACKAGES = ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node"];

describe("the client's vendor bundle", () => {
  const built = read(pathToFileURL(VENDOR + "/"));

  it("was built by npm ci (prepare) for the installed versions", () => {
    expect(built, "no bundle: run npm run build:vendor").toBeDefined();
    expect([...built!.urls.keys()]).toEqual(
      expect.arrayContaining(["@bufbuild/protobuf", "@connectrpc/connect-node"]),
    );
  });

  it("exports from each entry exactly what the package exports", async () => {
    for (const [specifier, url] of built!.urls) {
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
    const at = pathToFileURL(dir + "/");
    afterAll(() => rmSync(root, { recursive: true, force: true }));
    /** Installs a stand-in of each bundled package at the version the real bundle was built for. */
    const install = (version?: string) => {
      const manifest = JSON.parse(readFileSync(path.join(VENDOR, "manifest.json"), "utf8")) as {
        versions: Record<string, string>;
      };
      for (const name of PACKAGES) {
        const pkg = path.join(root, "node_modules", name);
        rmSync(pkg, { recursive: true, force: true });
        mkdirSync(pkg, { recursive: true });
        writeFileSync(
          path.join(pkg, "package.json"),
          JSON.stringify({
            name,
            version: version ?? manifest.versions[name],
            type: "module",
            exports: { ".": "./index.js" },
          }),
        );
        writeFileSync(path.join(pkg, "index.js"), `export const WHICH = "installed";\n`);
      }
    };
    const copy = () => {
      rmSync(dir, { recursive: true, force: true });
      cpSync(VENDOR, dir, { recursive: true });
    };
    const editManifest = (edit: (m: Record<string, unknown>) => void) => {
      const file = path.join(dir, "manifest.json");
      const m = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
      edit(m);
      writeFileSync(file, JSON.stringify(m));
    };

    it("is used only whole, as built, for the versions installed", () => {
      install();
      expect(read(at), "no bundle yet").toBeUndefined();
      copy();
      expect(read(at)?.urls.get("@bufbuild/protobuf")).toBe(new URL("protobuf.mjs", at).href);

      install("0.0.1");
      expect(read(at), "another version installed").toBeUndefined();
      install();
      const linked = path.join(root, "node_modules", "@connectrpc", "connect-node");
      cpSync(linked, `${linked}-dev`, { recursive: true });
      rmSync(linked, { recursive: true });
      symlinkSync(`${linked}-dev`, linked);
      expect(read(at), "a package linked in (npm link)").toBeUndefined();
      install();
      const scope = path.join(root, "node_modules", "@bufbuild");
      cpSync(scope, `${scope}-dev`, { recursive: true });
      rmSync(scope, { recursive: true });
      symlinkSync(`${scope}-dev`, scope);
      expect(read(at), "a scope linked in").toBeUndefined();
      rmSync(scope);
      install();
      expect(read(at)).toBeDefined();

      writeFileSync(path.join(dir, "shared.mjs"), "export {};\n");
      expect(read(at), "a file cut short").toBeUndefined();
      copy();
      rmSync(path.join(dir, "connect.mjs"));
      expect(read(at), "a file missing").toBeUndefined();
      copy();
      writeFileSync(path.join(dir, "extra.mjs"), "export {};\n");
      expect(read(at), "a file the manifest does not size").toBeUndefined();
      copy();
      writeFileSync(path.join(dir, "manifest.json"), "{not json");
      expect(read(at), "a broken manifest").toBeUndefined();
      for (const [why, edit] of [
        ["no specifiers", (m) => delete m["specifiers"]],
        ["null specifiers", (m) => (m["specifiers"] = null)],
        ["no versions", (m) => (m["versions"] = {})],
        ["no sizes", (m) => delete m["bytes"]],
        ["a specifier to a file not checked", (m) => (m["specifiers"] = { x: "other.mjs" })],
        ["a specifier to another place", (m) => (m["specifiers"] = { x: "data:text/javascript," })],
        ["a file elsewhere", (m) => (m["bytes"] = { "../../x.mjs": 0 })],
        [
          "a specifier of another package",
          (m) => (m["specifiers"] = { "node:fs": "protobuf.mjs" }),
        ],
      ] as [string, (m: Record<string, unknown>) => void][]) {
        copy();
        editManifest(edit);
        expect(read(at), why).toBeUndefined();
      }
    });

    it("serves only imports of the top-level packages (a plugin's own copy stays its own), from the text it read", () => {
      install();
      copy();
      const plugin = path.join(root, "plugin");
      const own = path.join(plugin, "node_modules", "@bufbuild", "protobuf");
      mkdirSync(own, { recursive: true });
      writeFileSync(
        path.join(own, "package.json"),
        JSON.stringify({ version: "1.0.0", type: "module", exports: { ".": "./index.js" } }),
      );
      writeFileSync(path.join(own, "index.js"), `export const WHICH = "plugin's own";\n`);
      writeFileSync(path.join(plugin, "p.mjs"), `export { WHICH } from "@bufbuild/protobuf";\n`);
      writeFileSync(path.join(root, "app.mjs"), `export * as pb from "@bufbuild/protobuf";\n`);
      mkdirSync(path.join(root, "services"));
      writeFileSync(
        path.join(root, "services", "s.mjs"),
        `export * as pb from "@bufbuild/protobuf";\n`,
      );
      const probe = path.join(root, "probe.mjs");
      writeFileSync(
        probe,
        `import { useVendorBundle } from ${JSON.stringify(pathToFileURL(path.join(ROOT, "bin", "vendor.js")).href)};
         useVendorBundle(new URL(${JSON.stringify(at.href)}));
         // Read whole at start: a rebuild taking the folder away meanwhile changes nothing.
         (await import("node:fs")).rmSync(${JSON.stringify(dir)}, { recursive: true });
         const { pb } = await import("./app.mjs");
         const { WHICH } = await import("./plugin/p.mjs");
         const own = (await import("./services/s.mjs")).pb;
         console.log(JSON.stringify({ app: typeof pb.create, own: typeof own.create, plugin: WHICH }));`,
      );
      const r = spawnSync(process.execPath, [probe], { encoding: "utf8", cwd: root });
      expect(r.stderr).toBe("");
      expect(JSON.parse(r.stdout)).toEqual({
        app: "function",
        own: "function",
        plugin: "plugin's own",
      });
    });
  });

  /**
   * The files a `conductor tasks` loads from disk, as a hook given by NODE_OPTIONS sees them (the
   * bundle's own, served from the text it checked, do not reach it).
   */
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
    expect(withBundle.filter((u) => /node_modules\/@(bufbuild|connectrpc)\//.test(u))).toEqual([]);
    const without = loaded({ CONDUCTOR_VENDOR_BUNDLE: "0" });
    expect(without.filter((u) => u.includes("/.cache/conductor/vendor/"))).toEqual([]);
    expect(without.length).toBeGreaterThan(withBundle.length + 100);
  });
});
