#!/usr/bin/env node
// The `conductor` command. Runs the TypeScript sources directly on Node 24 (type stripping).
import module from "node:module";

// Caches compiled modules between runs (a client command starts about a third faster).
module.enableCompileCache?.();
const { main } = await import("../services/cli/main.ts");
const { flushed, guardOutput } = await import("../services/cli/stdout.ts");

// A failed write ends the command (quietly when the reader went away: `… | head -1`).
guardOutput(process.stdout, process.stderr, (code) => process.exit(code));
const code = await main(process.argv.slice(2), process.env);
// Output still queued for a pipe is written before exiting; then client connections and
// timers must not keep a finished command alive.
await flushed(process.stdout);
process.exit(code);
