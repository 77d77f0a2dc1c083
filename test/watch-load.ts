import { readFileSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { WatchTaskRequestSchema } from "../gen/conductor/v1/orchestrator_pb.js";
import {
  AgentOutputSchema,
  StateChangeSchema,
  TaskSpecSchema,
  TaskState,
} from "../gen/conductor/v1/task_pb.js";
import { TaskStore } from "../services/orchestrator/store.ts";

/**
 * Writes a task that ended after `lines` output events of `lineBytes` each (or, given `text`,
 * the text of the nth line, 1-based) into the Orchestrator database under `dataDir` (which
 * must not be open elsewhere); returns its id.
 */
export function writeHistory(
  dataDir: string,
  lines: number,
  lineBytes: number,
  retentionBytes: number,
  text?: (n: number) => string,
): string {
  const store = new TaskStore(dataDir, { outputRetentionBytes: retentionBytes });
  try {
    const id = `history-${lines}x${lineBytes}`;
    const now = Date.now();
    store.insert(id, create(TaskSpecSchema, { prompt: "print a lot" }), 1, now);
    const same = create(AgentOutputSchema, { type: "assistant", text: "y".repeat(lineBytes) });
    const line = (n: number) =>
      text ? create(AgentOutputSchema, { type: "assistant", text: text(n) }) : same;
    store.tx(() => {
      for (let i = 1; i <= lines; i++)
        store.appendEvent(id, { case: "output", value: line(i) }, now);
    });
    store.transition(id, [TaskState.QUEUED], { state: TaskState.SUCCEEDED, endTime: now });
    store.appendEvent(
      id,
      { case: "stateChange", value: create(StateChangeSchema, { state: TaskState.SUCCEEDED }) },
      now,
    );
    return id;
  } finally {
    store.close();
  }
}

/** A WatchTask call over its own HTTP/2 connection that reads its first bytes, then nothing more. */
export interface StalledWatch {
  close(): void;
}

/**
 * Opens WatchTask on `socket` as a client that never reads past the first chunk: HTTP/2 flow
 * control then stops the server's writes, and whatever the server keeps for the stream stays in
 * its memory. Resolves once the first response bytes arrived.
 */
export async function stalledWatch(socket: string, id: string): Promise<StalledWatch> {
  const session = http2.connect("http://localhost", {
    createConnection: () => net.connect(socket),
  });
  session.on("error", () => {}); // closed by the test
  const body = toBinary(WatchTaskRequestSchema, create(WatchTaskRequestSchema, { id }));
  const frame = Buffer.alloc(5 + body.byteLength);
  frame.writeUInt32BE(body.byteLength, 1);
  frame.set(body, 5);
  const stream = session.request({
    ":method": "POST",
    ":path": "/conductor.v1.OrchestratorService/WatchTask",
    "content-type": "application/grpc",
    te: "trailers",
  });
  stream.on("error", () => {});
  stream.end(frame);
  await new Promise<void>((resolve, reject) => {
    stream.once("data", () => {
      stream.pause();
      resolve();
    });
    stream.once("close", () => reject(new Error("WatchTask closed before any data")));
  });
  return {
    close: () => {
      stream.destroy();
      session.destroy();
    },
  };
}

/** Resident and peak resident memory of a process, in MiB (Linux /proc). */
export function memoryOf(pid: number): { rssMiB: number; peakMiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1]);
  return { rssMiB: kib("VmRSS") / 1024, peakMiB: kib("VmHWM") / 1024 };
}
