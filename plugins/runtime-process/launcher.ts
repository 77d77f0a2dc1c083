// The first program of every process-runtime run (inside its sandbox): it serves the
// AgentHost's model proxy socket on a loopback port of the sandbox's own network namespace,
// runs the program with ANTHROPIC_BASE_URL pointing there, and exits as the program did.
// The API key never enters the sandbox: the proxy, outside, adds it.
//
//   node launcher.ts <model.sock> -- <program> [args…]
//
// Node built-ins only: it runs on the node binary bound read-only into the sandbox.
import { spawn } from "node:child_process";
import net from "node:net";
import { constants } from "node:os";

const [socketPath, separator, program, ...args] = process.argv.slice(2);
if (!socketPath || separator !== "--" || !program) {
  process.stderr.write("usage: launcher.ts <model.sock> -- <program> [args…]\n");
  process.exit(2);
}

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

// The AgentHost's own umask (077) keeps its files private; the agent's files are ordinary.
process.umask(0o022);

server.listen(0, "127.0.0.1", () => {
  const { port } = server.address() as net.AddressInfo;
  const child = spawn(program, args, {
    stdio: "inherit",
    env: { ...process.env, ANTHROPIC_BASE_URL: `http://127.0.0.1:${port}` },
  });
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
});
