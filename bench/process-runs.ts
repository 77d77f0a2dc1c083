// Prints what one run costs on the process runtime: N runs one after another of an instant fake
// CLI (sh printing a stream-json `system` and `result` line) through the bubblewrap backend, with
// a model socket and a lifeline as the AgentHost gives every run. Wall per run, runs/s, and the
// CPU this process (the AgentHost's part: spawning, pipes) spends per run, and the machine's busy
// time per run (every CPU, the kernel's own threads too: namespaces are torn down there; run it
// on an idle machine). Run as root (the sandbox drops to uid 61000).
// With --concurrency C (one sandbox each, as C agents), C runs at once: the runs/s the process
// runtime alone allows, the ceiling of Conductor's completions on it (bench/peers.ts).
// Run: node bench/process-runs.ts [--runs 50] [--concurrency 1]
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { createProcessBackend } from "../plugins/runtime-process/index.ts";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "50" },
    concurrency: { type: "string", default: "1" },
  },
});
const RUNS = Number(values.runs);
if (!Number.isInteger(RUNS) || RUNS < 0 || RUNS > 100_000) throw new Error("--runs: 0 to 100000");
const CONCURRENCY = Number(values.concurrency);
if (!Number.isInteger(CONCURRENCY) || CONCURRENCY < 1 || CONCURRENCY > 64)
  throw new Error("--concurrency: 1 to 64");
const CLI = `echo '{"type":"system","subtype":"init"}'; echo '{"type":"result","subtype":"success"}'`;

const dir = mkdtempSync(path.join(tmpdir(), "conductor-bench-runs-"));
const ws = path.join(dir, "ws");
const runDir = path.join(dir, "run");
mkdirSync(ws);
chownSync(ws, 61000, 61000);
mkdirSync(runDir, { mode: 0o755 });
const held = new Set<net.Socket>();
const listen = async (name: string, onConnection: (s: net.Socket) => void) => {
  const socketPath = path.join(runDir, name);
  const server = net.createServer(onConnection);
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  chmodSync(socketPath, 0o666);
  return { socketPath, server };
};
const lifeline = await listen("lifeline.sock", (s) => {
  held.add(s);
  s.on("close", () => held.delete(s));
  s.on("error", () => s.destroy());
});
const model = await listen("model.sock", (s) => s.end());
const backend = createProcessBackend({ stateDir: path.join(dir, "state") });
const sandboxes = [];
for (let a = 0; a < CONCURRENCY; a++) {
  const h = await backend.create({
    ...{ nodeId: "bench", agentId: `a${a}`, image: "", labels: {}, limits: {}, network: "none" },
    mounts: [{ hostPath: ws }, { hostPath: runDir, readOnly: true }],
    env: { CONDUCTOR_MODEL_SOCKET: model.socketPath, CONDUCTOR_RUN_LIFELINE: lifeline.socketPath },
    user: "61000:61000",
  });
  await backend.start(h);
  sandboxes.push(h);
}

const walls: number[] = [];
const cpu0 = process.cpuUsage();
const machine0 = machineBusyMs();
const t0 = performance.now();
let next = 0;
await Promise.all(
  sandboxes.map(async (h) => {
    for (let i = next++; i < RUNS; i = next++) {
      const t = performance.now();
      const x = await backend.exec(h, { argv: ["/bin/sh", "-c", CLI], cwd: ws, env: {} });
      let lines = 0;
      x.onStdoutLine(() => lines++);
      const status = await x.exited;
      if (status.code !== 0 || lines !== 2) {
        throw new Error(`run ${i} failed: ${JSON.stringify(status)} ${x.stderrTail()}`);
      }
      walls.push(performance.now() - t);
    }
  }),
);
const elapsed = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
const machine = machineBusyMs() - machine0;
for (const h of sandboxes) await backend.destroy(h);
for (const s of held) s.destroy();
lifeline.server.close();
model.server.close();
rmSync(dir, { recursive: true, force: true });
if (RUNS > 0) {
  const sorted = walls.sort((a, b) => a - b);
  const ms = (v: number) => v.toFixed(1);
  console.log(
    `${RUNS} runs of an instant fake CLI, ${CONCURRENCY === 1 ? "one at a time" : `${CONCURRENCY} at a time`}: wall per run p50 ${ms(sorted[Math.floor(RUNS / 2)]!)} ms, p90 ${ms(sorted[Math.floor(RUNS * 0.9)]!)} ms; ${((RUNS / elapsed) * 1000).toFixed(1)} runs/s; this process's CPU ${ms((cpu.user + cpu.system) / 1000 / RUNS)} ms per run; the machine's ${ms(machine / RUNS)} ms per run (all of its CPUs' busy time, kernel threads included: run it on an idle machine)`,
  );
}

/** Milliseconds all of the machine's CPUs have been busy since boot (/proc/stat's first line). */
function machineBusyMs(): number {
  const [user, nice, system, , , irq, softirq, steal] = readFileSync("/proc/stat", "utf8")
    .split("\n")[0]!
    .split(/\s+/)
    .slice(1)
    .map(Number);
  const ticks = [user, nice, system, irq, softirq, steal].reduce((a, b) => a! + b!, 0)!;
  return (ticks * 1000) / 100; // USER_HZ: 100 on Linux
}
