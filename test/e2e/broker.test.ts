// The Broker end to end: `conductor broker` killed with SIGKILL loses nothing acknowledged,
// also on a full disk; two real Claude Code agents under `conductor up` talk through it.
import { execFileSync } from "node:child_process";
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import {
  agentCredential,
  brokerClient,
  loadBrokerSecret,
  orchestratorCredential,
} from "../../services/broker/access.ts";
import {
  scripted,
  spec,
  startService,
  testRuntimes,
  waitForEnd,
  waitForState,
} from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

describe("conductor broker, killed with SIGKILL", () => {
  it("delivers after the restart every message whose Send was answered, and nothing acknowledged again", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "broker-e2e-"));
    const args = ["--socket-dir", path.join(dir, "run"), "--data-dir", path.join(dir, "data")];
    const env = {
      CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
      CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1",
      CONDUCTOR_BROKER_ACK_TIMEOUT_SECONDS: "300",
      // 150 unread messages from one sender: more than its default share of an inbox.
      CONDUCTOR_BROKER_SENDER_SHARE: "300",
    };
    const socketPath = path.join(dir, "run", "broker.sock");
    let service = await startService("broker", args, env);
    try {
      const secret = loadBrokerSecret(path.join(dir, "data"));
      const client = (id: string) =>
        brokerClient({
          socketPath,
          credential:
            id === "orchestrator" ? orchestratorCredential(secret) : agentCredential(secret, id),
        });
      for (const agentId of ["a", "b", "r"])
        await client("orchestrator").registerAgent({ agentId });
      // Concurrent senders: every send that answered is on disk.
      const sent = new Map<string, string>(); // id → payload
      await Promise.all(
        ["a", "b"].map(async (s) => {
          const c = client(s);
          for (let i = 0; i < 150; i++) {
            const res = await c.send({
              destination: { case: "receiver", value: "r" },
              payload: `${s}:${i}`,
            });
            sent.set(res.messageId, `${s}:${i}`);
          }
        }),
      );
      const r = client("r");
      const acked = (await r.receive({ maxMessages: 100 })).messages;
      expect((await r.ack({ messageIds: acked.map((m) => m.id) })).acked).toBe(100);
      expect((await r.receive({ maxMessages: 50 })).messages).toHaveLength(50); // leased, not acked

      await service.kill9();
      service = await startService("broker", args, env);

      const r2 = client("r"); // a new connection to the new process
      const after: { id: string; payload: string }[] = [];
      for (let i = 0; i < 100; i++) {
        const { messages } = await r2.receive({ maxMessages: 100 });
        if (messages.length === 0) break;
        after.push(...messages);
        await r2.ack({ messageIds: messages.map((m) => m.id) });
      }
      const ackedIds = new Set(acked.map((m) => m.id));
      expect(after.filter((m) => ackedIds.has(m.id))).toEqual([]);
      expect(new Set(after.map((m) => m.id))).toEqual(
        new Set([...sent.keys()].filter((id) => !ackedIds.has(id))),
      );
      expect(after.length).toBe(200);
      for (const s of ["a", "b"]) {
        const seq = [...acked, ...after]
          .filter((m) => m.payload.startsWith(`${s}:`))
          .map((m) => Number(m.payload.split(":")[1]));
        expect(seq).toEqual([...Array(150).keys()]);
      }
    } finally {
      await service.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Writes `file` until its disk is full. */
function fill(file: string): void {
  const fd = openSync(file, "a");
  try {
    for (;;) writeSync(fd, Buffer.alloc(16_384));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOSPC") throw e;
  } finally {
    closeSync(fd);
  }
}

describe.skipIf(process.getuid?.() !== 0)("conductor broker on a full disk", () => {
  it("refuses sends it cannot store, survives SIGKILL and a restart on the full disk, and recovers", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "broker-e2e-full-"));
    const data = path.join(dir, "data");
    mkdirSync(data);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", data]);
    const args = ["--socket-dir", path.join(dir, "run"), "--data-dir", data];
    const env = {
      CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn",
      CONDUCTOR_OBSERVABILITY_METRICS_PORT: "-1",
    };
    const socketPath = path.join(dir, "run", "broker.sock");
    let service = await startService("broker", args, env);
    try {
      const secret = loadBrokerSecret(data);
      const client = (id: string) =>
        brokerClient({
          socketPath,
          credential:
            id === "orchestrator" ? orchestratorCredential(secret) : agentCredential(secret, id),
        });
      await client("orchestrator").registerAgent({ agentId: "r" });
      // What the operator will free: another program's 1 MB on the same disk.
      const spare = path.join(data, "spare");
      writeFileSync(spare, Buffer.alloc(1_000_000));
      const sent = new Set<string>();
      let refusal: ConnectError | undefined;
      for (let i = 0; i < 100 && !refusal; i++) {
        const payload = `${i}:`.padEnd(60_000, "x");
        await client("orchestrator")
          .send({ destination: { case: "receiver", value: "r" }, payload })
          .then((res) => sent.add(res.messageId))
          .catch((e: unknown) => (refusal = ConnectError.from(e)));
      }
      expect(refusal?.code).toBe(Code.ResourceExhausted);
      expect(refusal?.rawMessage).toContain(
        `the disk holding the Broker's data folder (${data}) is full`,
      );
      const filler = path.join(data, "filler");
      fill(filler);

      await service.kill9();
      service = await startService("broker", args, env); // on the full disk
      const got = new Set<string>();
      for (let i = 0; i < 100; i++) {
        const { messages } = await client("r").receive({ maxMessages: 100 });
        if (messages.length === 0) break;
        for (const m of messages) got.add(m.id);
        await client("r").ack({ messageIds: messages.map((m) => m.id) });
      }
      expect(got).toEqual(sent);
      rmSync(filler);
      rmSync(spare);
      await client("orchestrator").send({
        destination: { case: "receiver", value: "r" },
        payload: "space is back",
      });
      const after = await client("r").receive({});
      expect(after.messages.map((m) => m.payload)).toEqual(["space is back"]);

      // Stopped cleanly, the disk filled while it was down, started again: it serves.
      await service.stop();
      fill(filler);
      service = await startService("broker", args, env);
      const kept = await client("r").receive({});
      expect(kept.messages.map((m) => m.payload)).toEqual(["space is back"]);
    } finally {
      await service.stop();
      execFileSync("umount", ["--lazy", data]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.each(testRuntimes())(
  "two agents collaborating through the Broker under conductor up on %s",
  (runtime) => {
    const setup = useConductor(() => ({ agents: 2, runtime }));

    it("agent A asks agent B with request; B reads it and replies; A writes the reply into a file", async () => {
      // Nothing of the Broker is in an agent's sandbox: its run folder holds the AgentHost's
      // sockets alone (the tools are served on model.sock), no credential, no server script.
      const runDir = path.join(setup.conductor.dataDir, "agents", "agent-1", "run");
      expect(readdirSync(runDir).filter((f) => !/^(model|lifeline)\.sock$/.test(f))).toEqual([]);
      const { client } = setup.conductor;
      const tools = ["Write", "mcp__conductor"];
      // B first: it waits in read_messages for the request, then answers it.
      const b = await client.submitTask({
        spec: spec({
          allowedTools: tools,
          prompt: scripted([
            { tool: { name: "mcp__conductor__read_messages", input: { wait_seconds: 60 } } },
            {
              tool: {
                name: "mcp__conductor__reply",
                input: { correlation_id: "e2e-1", message: "pong from B" },
              },
            },
            { text: "B answered" },
          ]),
        }),
      });
      await waitForState(client, b.task!.id, TaskState.RUNNING);
      const agentB = (await client.getTask({ id: b.task!.id })).task!.agentId;
      const a = await client.submitTask({
        spec: spec({
          allowedTools: tools,
          prompt: scripted([
            {
              tool: {
                name: "mcp__conductor__request",
                input: {
                  to: agentB,
                  message: "ping from A",
                  correlation_id: "e2e-1",
                  timeout_seconds: 60,
                },
              },
            },
            { write: { path: "reply.txt", content: "{{last_tool_result}}" } },
            { text: "A got the reply" },
          ]),
        }),
      });
      const [endedA, endedB] = await Promise.all([
        waitForEnd(client, a.task!.id, 120_000),
        waitForEnd(client, b.task!.id, 120_000),
      ]);
      expect(endedB.state, endedB.result?.error).toBe(TaskState.SUCCEEDED);
      expect(endedA.state, endedA.result?.error).toBe(TaskState.SUCCEEDED);
      expect(endedA.agentId).not.toBe(agentB);
      const reply = readFileSync(
        path.join(setup.conductor.dataDir, "agents", endedA.agentId, "workspace", "reply.txt"),
        "utf8",
      );
      expect(reply).toBe(`Reply from ${agentB} (correlation id e2e-1):\npong from B`);
      // B's run saw A's request, from A's identity, in its tool result.
      const events = [];
      for await (const { event } of client.watchTask({ id: b.task!.id })) events.push(event);
      const seen = JSON.stringify(
        events.map((e) => (e?.kind.case === "output" ? e.kind.value.rawJson : "")),
      );
      expect(seen).toContain(`from: ${endedA.agentId}`);
      expect(seen).toContain("ping from A");
      // B's CLI reached the tools over HTTP: its MCP server is connected, with no process of its own.
      const init = events.find(
        (e) => e?.kind.case === "output" && e.kind.value.rawJson.includes('"subtype":"init"'),
      );
      const initJson = init?.kind.case === "output" ? init.kind.value.rawJson : "{}";
      expect((JSON.parse(initJson) as { mcp_servers?: unknown }).mcp_servers).toEqual([
        { name: "conductor", status: "connected", source: "dynamic" },
      ]);
    });
  },
);
