/**
 * What one RPC costs the server on each of Conductor's two gRPC server stacks, side by side in
 * one run: serveUnix's (@grpc/grpc-js carrying connect handlers, services/shared/grpc-server.ts;
 * every service's Unix socket) and connect-node's (rpcHandler on node:http2; the TCP listener
 * and the console). Both serve the same grpc.health.v1 Health/Check with the same interceptors
 * (authorisation, error edge) from a process of their own; the callers are connect clients in
 * this one, as the CLI's and the services' are. Prints calls/s and the server's CPU per call
 * (user + system, from /proc), median of --rounds, the stacks taking turns.
 *
 *   node bench/rpc-stacks.ts [--calls 10000] [--callers 32] [--rounds 3]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { createClient, createContextValues } from "@connectrpc/connect";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { PEER } from "../services/shared/authz.ts";
import { HealthRegistry } from "../services/shared/health.ts";
import { rpcHandler, serveUnix, unixTransport } from "../services/shared/transport.ts";

type Stack = "grpc-js" | "connect-node";
const STACKS: Stack[] = ["grpc-js", "connect-node"];

const { values } = parseArgs({
  options: {
    calls: { type: "string", default: "10000" },
    callers: { type: "string", default: "32" },
    rounds: { type: "string", default: "3" },
    serve: { type: "string" },
    socket: { type: "string" },
  },
});

if (values.serve) {
  await serve(values.serve as Stack, values.socket!);
} else {
  const count = (name: "calls" | "callers" | "rounds", max: number) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 1 || n > max)
      throw new Error(`--${name} must be a whole number from 1 to ${max}`);
    return n;
  };
  await compare(count("calls", 1_000_000), count("callers", 1_000), count("rounds", 20));
}

/** Serves Health on `socket` with `stack` until stdin closes; prints "ready" once listening. */
async function serve(stack: Stack, socket: string): Promise<void> {
  const health = new HealthRegistry();
  const opts = { services: [Health], routes: () => undefined };
  let close: () => Promise<void>;
  if (stack === "grpc-js") {
    const server = await serveUnix({ ...opts, socketPath: socket });
    close = () => server.close();
  } else {
    const handler = rpcHandler(opts, health, () =>
      createContextValues().set(PEER, { kind: "unix" }),
    );
    health.set("", "SERVING");
    const server = http2.createServer(handler);
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  }
  process.stdout.write("ready\n");
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.once("end", resolve));
  await close();
  process.exit(0);
}

/** CPU time (user + system) of a process so far, in ms, from /proc. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

async function start(stack: Stack, socket: string): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [import.meta.filename, "--serve", stack, "--socket", socket],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout.once("data", () => resolve());
    child.once("exit", (code) => reject(new Error(`the ${stack} server exited (${code})`)));
  });
  return child;
}

/** `calls` Health/Check calls from `callers` concurrent callers: calls/s and server µs/call. */
async function round(stack: Stack, dir: string, calls: number, callers: number) {
  const socket = path.join(dir, `${stack}.sock`);
  const child = await start(stack, socket);
  try {
    const client = createClient(Health, unixTransport(socket));
    for (let i = 0; i < 200; i++) await client.check({}); // warm both ends
    const cpu0 = cpuMs(child.pid!);
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: callers }, async () => {
        while (next++ < calls) await client.check({});
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    return { perSecond: calls / seconds, cpuUs: ((cpuMs(child.pid!) - cpu0) * 1000) / calls };
  } finally {
    child.stdin!.end();
    await new Promise((resolve) => child.once("exit", resolve));
  }
}

async function compare(calls: number, callers: number, rounds: number): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), "rpc-stacks-"));
  const results = new Map<Stack, { perSecond: number[]; cpuUs: number[] }>(
    STACKS.map((s) => [s, { perSecond: [], cpuUs: [] }]),
  );
  try {
    for (let r = 0; r < rounds; r++) {
      for (const stack of STACKS) {
        const { perSecond, cpuUs } = await round(stack, dir, calls, callers);
        results.get(stack)!.perSecond.push(perSecond);
        results.get(stack)!.cpuUs.push(cpuUs);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const cpu = (s: Stack) => median(results.get(s)!.cpuUs);
  console.log(
    `Health/Check over a Unix socket, ${calls} calls from ${callers} connect callers, median of ${rounds}`,
  );
  for (const stack of STACKS) {
    const r = results.get(stack)!;
    console.log(
      `  ${stack.padEnd(13)} ${median(r.perSecond).toFixed(0).padStart(6)} calls/s   server CPU ${cpu(stack).toFixed(0).padStart(4)} µs/call`,
    );
  }
  console.log(
    `  server CPU per call, grpc-js / connect-node: ${(cpu("grpc-js") / cpu("connect-node")).toFixed(2)}×`,
  );
}
