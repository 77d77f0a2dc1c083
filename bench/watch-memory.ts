// Prints the Orchestrator's memory while WatchTask streams do not read (issue 9, item 11):
// a task with a long output history is written into a fresh data folder, `conductor
// orchestrator` is started on it as its own process, and `--streams` WatchTask calls each read
// their first bytes and then nothing more. Printed: the process's resident memory before, and
// its peak (VmHWM) and current resident memory once every stream got its first bytes.
//   npx node bench/watch-memory.ts [--mb 82] [--line-kb 1024] [--streams 20] [--bin bin/conductor.js]
// `--bin /path/to/other/bin/conductor.js` measures another checkout (e.g. main, before the fix).
// `--live` measures live streams instead: the stalled streams open on a task that then floods
// `--mb` of output in `--line-kb` lines, played by an AgentHost this bench serves.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { OrchestratorService } from "../gen/conductor/v1/orchestrator_pb.js";
import { TaskSpecSchema, TaskState } from "../gen/conductor/v1/task_pb.js";
import { unixTransport } from "../services/shared/transport.ts";
import { startService } from "../test/harness.ts";
import { FakeAgentHost, started, type Play } from "../test/orchestrator-world.ts";
import { memoryOf, stalledWatch, writeHistory, type StalledWatch } from "../test/watch-load.ts";

const { values } = parseArgs({
  options: {
    mb: { type: "string", default: "82" },
    "line-kb": { type: "string", default: "1024" },
    streams: { type: "string", default: "20" },
    bin: { type: "string" },
    live: { type: "boolean", default: false },
  },
});
const lineBytes = Number(values["line-kb"]) * 1024;
const lines = Math.ceil((Number(values.mb) * 1024 * 1024) / lineBytes);
const streams = Number(values.streams);

const dir = mkdtempSync(path.join(tmpdir(), "conductor-bench-watch-"));
const dataDir = path.join(dir, "data");
const socketDir = path.join(dir, "run");
const retention = Math.min(1024 ** 3, 2 * lines * lineBytes);
const opened: StalledWatch[] = [];
try {
  const hostSocket = path.join(dir, "agent-host.sock");
  const id = values.live ? "" : writeHistory(dataDir, lines, lineBytes, retention);
  const env = {
    CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1",
    CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
    CONDUCTOR_ORCHESTRATOR_AGENT_HOSTS: hostSocket,
    // (older checkouts have no retention to set)
    ...(values.bin ? {} : { CONDUCTOR_ORCHESTRATOR_EVENT_RETENTION_BYTES: String(retention) }),
  };
  const args = ["--data-dir", dataDir, "--socket-dir", socketDir];
  let release!: () => void;
  const go = new Promise<void>((resolve) => (release = resolve));
  const text = "y".repeat(lineBytes);
  const flood: Play = async function* (req, _ctx, host) {
    yield started(req, host);
    await go;
    for (let i = 0; i < lines; i++)
      yield { kind: { case: "output", value: { type: "assistant", text } } };
    host.setAgent("");
    yield { kind: { case: "outcome", value: { state: TaskState.SUCCEEDED, result: {} } } };
  };
  const host = await new FakeAgentHost("", [flood]).serve(hostSocket);
  const proc = await startService("orchestrator", args, env, values.bin);
  try {
    const socket = path.join(socketDir, "orchestrator.sock");
    const client = createClient(OrchestratorService, unixTransport(socket));
    const taskId = values.live
      ? (await client.submitTask({ spec: create(TaskSpecSchema, { prompt: "flood" }) })).task!.id
      : id;
    await client.getTask({ id: taskId });
    const before = memoryOf(proc.proc.pid!);
    const t0 = Date.now();
    for (let i = 0; i < streams; i++) opened.push(await stalledWatch(socket, taskId));
    if (values.live) {
      release();
      for await (const _ of client.watchTask({ id: taskId })) {
        // a reader that reads, to the task's end
      }
    }
    const after = memoryOf(proc.proc.pid!);
    const what = values.live ? "live output" : "history";
    console.log(
      `${streams} stalled WatchTask streams on ${lines} output events of ${lineBytes / 1024} KiB ` +
        `(${((lines * lineBytes) / 1024 ** 2).toFixed(0)} MiB ${what}):`,
    );
    console.log(`  orchestrator RSS before        ${before.rssMiB.toFixed(0).padStart(6)} MiB`);
    console.log(`  orchestrator peak RSS after    ${after.peakMiB.toFixed(0).padStart(6)} MiB`);
    console.log(`  orchestrator RSS after         ${after.rssMiB.toFixed(0).padStart(6)} MiB`);
    console.log(
      `  growth (peak - before)         ${(after.peakMiB - before.rssMiB).toFixed(0).padStart(6)} MiB`,
    );
    console.log(`  done in                        ${String(Date.now() - t0).padStart(6)} ms`);
  } finally {
    for (const w of opened) w.close();
    await proc.stop();
    await host.kill();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
