#!/usr/bin/env node
// The `conductor` command. Runs the TypeScript sources directly on Node 24 (type stripping).
// Plain JavaScript that any Node parses: an older `node` first on PATH (`node_modules/.bin/conductor`
// from a shell whose node is the system's) runs it again on the Node 24 of the `node` package.
import module from "node:module";

if (Number(process.versions.node.split(".")[0]) < 24) await onNode24();

// Caches compiled modules between runs (a client command starts about a third faster).
module.enableCompileCache?.();
// Its gRPC and protobuf packages from one bundle, where `npm ci` built it (bin/vendor.js).
const { useVendorBundle } = await import("./vendor.js");
useVendorBundle();
const { main } = await import("../services/cli/main.ts");
const { flushed, guardOutput } = await import("../services/cli/stdout.ts");

// A failed write ends the command (quietly when the reader went away: `… | head -1`).
guardOutput(process.stdout, process.stderr, (code) => process.exit(code));
const code = await main(process.argv.slice(2), process.env, { serviceHeap: true });
// Output still queued for a pipe is written before exiting; then client connections and
// timers must not keep a finished command alive.
await flushed(process.stdout);
process.exit(code);

/**
 * Runs this command as a child of the `node` package's Node 24 (about one extra start of the
 * older node) and ends as it ends: with its exit code, or killed by the same signal. Never returns.
 */
async function onNode24() {
  const { spawn } = await import("node:child_process");
  const path = await import("node:path");
  const { fileURLToPath } = await import("node:url");
  let node;
  try {
    const pkg = module.createRequire(import.meta.url).resolve("node/package.json");
    node = path.join(path.dirname(pkg), "bin", "node");
  } catch {
    process.stderr.write(
      `conductor: needs Node.js 24 or later, and this is ${process.version}; ` +
        `run "npm ci" in Conductor's folder (it installs Node 24 as the "node" package)\n`,
    );
    process.exit(1);
  }
  const child = spawn(node, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: "inherit",
  });
  // A terminal's Ctrl-C (and Ctrl-\) reaches the child too, as it shares the foreground process
  // group: passing it on would be a second SIGINT, which stops a service at once. A signal sent
  // to this process alone is passed on.
  const ignore = () => {};
  const pass = (signal) => child.kill(signal);
  process.on("SIGINT", ignore).on("SIGQUIT", ignore).on("SIGTERM", pass).on("SIGHUP", pass);
  child.once("error", (e) => {
    process.stderr.write(`conductor: cannot start ${node}: ${e.message}\n`);
    process.exit(1);
  });
  const [code, signal] = await new Promise((resolve) =>
    child.once("exit", (...end) => resolve(end)),
  );
  if (signal) {
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  }
  process.exit(code ?? 1);
}
