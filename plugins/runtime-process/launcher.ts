// The first program of every process-runtime run (inside its sandbox). With --model it serves
// the AgentHost's model proxy socket on a loopback port of the sandbox's own network namespace
// and runs the program with ANTHROPIC_BASE_URL pointing there: the API key never enters the
// sandbox (the proxy, outside, adds it). With --lifeline it first holds a connection to the
// run's lifeline socket and ends the run — itself and its process group, and so, sandboxed, the
// whole pid namespace — when that closes, or, with --idle-ms, when nothing has come on it for
// that long (the AgentHost is frozen: services/agent-host/lifeline.ts). It exits as the
// program did.
//
//   node launcher.ts [--model SOCK] [--lifeline SOCK [--idle-ms N]] -- <program> [args…]
//
// Node built-ins only: it runs on the node binary bound read-only into the sandbox.
import { spawn } from "node:child_process";
import net from "node:net";
import { constants } from "node:os";
import { parseArgs } from "node:util";

const USAGE =
  "usage: launcher.ts [--model SOCK] [--lifeline SOCK [--idle-ms N]] -- <program> [args…]";

const options = {
  model: { type: "string" },
  lifeline: { type: "string" },
  "idle-ms": { type: "string" },
} as const;
const { values, positionals } = (() => {
  try {
    return parseArgs({ options, allowPositionals: true });
  } catch (e) {
    process.stderr.write(`launcher: ${(e as Error).message}\n${USAGE}\n`);
    return process.exit(2);
  }
})();
const [program, ...args] = positionals;
const idleMs = values["idle-ms"] === undefined ? 0 : Number(values["idle-ms"]);
if (!program || !Number.isInteger(idleMs) || idleMs < 0) {
  process.stderr.write(`${USAGE}\n`);
  process.exit(2);
}

// The AgentHost's own umask (077) keeps its files private; the agent's files are ordinary.
process.umask(0o022);

/** Ends the run at once: every process of this group (the program's, unsandboxed) and this one. */
function endRun(why: string): never {
  process.stderr.write(`launcher: ${why}; ending the run\n`);
  try {
    process.kill(0, "SIGKILL");
  } catch {
    // not a group leader: exiting ends the sandbox's pid namespace
  }
  process.exit(137);
}

/** Resolves once the lifeline is held; the run ends when it closes or goes silent. */
function holdLifeline(socketPath: string): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    let held = false;
    s.once("connect", () => {
      held = true;
      resolve();
    });
    s.on("error", (e) => endRun(`lifeline ${held ? "lost" : "refused"} (${e.message})`));
    s.on("close", () => endRun("the AgentHost let go of the run's lifeline"));
    if (idleMs > 0) {
      s.setTimeout(idleMs, () => endRun(`no word from the AgentHost for ${idleMs} ms`));
    }
    s.resume(); // ticks: any data resets the timeout
  });
}

/** A loopback port forwarding to the model proxy's socket. */
function serveModel(socketPath: string): Promise<number> {
  const server = net.createServer((client) => {
    const upstream = net.connect(socketPath);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.on("error", end);
      s.on("close", end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port)),
  );
}

async function main(program: string): Promise<void> {
  if (values.lifeline) await holdLifeline(values.lifeline);
  const env = { ...process.env };
  if (values.model)
    env["ANTHROPIC_BASE_URL"] = `http://127.0.0.1:${await serveModel(values.model)}`;
  const child = spawn(program, args, { stdio: "inherit", env });
  // A TERM is for the program: the launcher stays to report how it ended.
  for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    process.on(sig, () => child.kill(sig));
  }
  child.on("error", (e) => {
    process.stderr.write(`launcher: cannot start ${program}: ${e.message}\n`);
    process.exit(127);
  });
  child.on("exit", (code, signal) => {
    process.exit(signal ? 128 + (constants.signals[signal] ?? 0) : (code ?? 1));
  });
}

main(program).catch((e: unknown) => {
  process.stderr.write(`launcher: ${(e as Error).message}\n`);
  process.exit(127);
});
