// Many machines: an Orchestrator and two AgentHosts, each in a network namespace of its own
// (test/netns.ts), joined over TCP with mutual TLS from `conductor certs`. Everything that
// crosses the network runs inside those namespaces; the test process reads the Orchestrator's
// Unix socket (a file, not a network address) and the nodes' files.
import type { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fromBinary, toBinary, create } from "@bufbuild/protobuf";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  HeartbeatRequestSchema,
  NodeState,
  RegisterNodeRequestSchema,
  ReportOutcomeRequestSchema,
} from "../../gen/conductor/v1/node_pb.js";
import {
  OrchestratorService,
  SubmitTaskRequestSchema,
  SubmitTaskResponseSchema,
  WatchTaskRequestSchema,
  WatchTaskResponseSchema,
} from "../../gen/conductor/v1/orchestrator_pb.js";
import { RunOutcomeSchema } from "../../gen/conductor/v1/agent_host_pb.js";
import { IssueAgentCredentialRequestSchema } from "../../gen/conductor/v1/broker_pb.js";
import { TaskState, type Task } from "../../gen/conductor/v1/task_pb.js";
import { unixTransport } from "../../services/shared/transport.ts";
import { expiredCert, foreignCa, makeCerts, tlsEnv, type TestCerts } from "../certs.ts";
import {
  ms,
  processesWith,
  PYTHON,
  RAW_CALL,
  ROOT,
  runtimeEnv,
  scripted,
  spec,
  startService,
  waitForEnd,
  waitForState,
  type ServiceProcess,
} from "../harness.ts";
import { makeNet, type NetHost, type TestNet } from "../netns.ts";

const BIN = path.join(ROOT, "bin", "conductor.js");
const BUF = path.join(ROOT, "node_modules", ".bin", "buf");
const LEASE_SECONDS = 8;
const ORCH_PORT = 7443;

let net: TestNet;
let dir: string;
let certs: TestCerts;
let orch: ServiceProcess;
let broker: ServiceProcess;
let brokerAddr: string;
interface FleetNode {
  host: NetHost;
  proc: ServiceProcess;
  dataDir: string;
}
const nodes = new Map<string, FleetNode>();
let orchAddr: string;
let client: Client<typeof OrchestratorService>;

/** A fake Messages API inside a namespace, on its loopback. */
async function fakeModelIn(host: NetHost): Promise<string> {
  const proc = host.spawn(process.execPath, [path.join(ROOT, "test", "fake-model", "main.ts")], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once("line", resolve);
    proc.once("exit", (code: number | null) => reject(new Error(`fake model exited with ${code}`)));
  });
  return (JSON.parse(line) as { url: string }).url;
}

const tlsOf = (name: string) => tlsEnv(certs.files(name));

const quiet = {
  CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "info",
  CONDUCTOR_OBSERVABILITY_METRICS_PORT: "0",
  CONDUCTOR_OBSERVABILITY_AGENT_HOST_METRICS_PORT: "0",
  CONDUCTOR_OBSERVABILITY_BROKER_METRICS_PORT: "0",
};

async function startNode(name: string, host: NetHost, labels: Record<string, string>) {
  const base = path.join(dir, name);
  const config = path.join(dir, `${name}.yaml`);
  writeFileSync(config, JSON.stringify({ agent_host: { labels, broker: brokerAddr } }));
  const proc = await startService(
    "agent-host",
    [
      ...["--config", config, "--socket-dir", path.join(base, "run")],
      ...["--data-dir", path.join(base, "data"), "--agents", "2", "--join", orchAddr],
    ],
    {
      ...quiet,
      ...runtimeEnv(),
      ...tlsOf(name),
      ANTHROPIC_API_KEY: "sk-test-key",
      ANTHROPIC_BASE_URL: await fakeModelIn(host),
      // Agents use the process runtime (bubblewrap) whatever the suite's runtimes are.
      CONDUCTOR_RUNTIME_BACKEND: "process",
    },
    BIN,
    host.spawn.bind(host) as typeof spawn,
  );
  nodes.set(name, { host, proc, dataDir: path.join(base, "data") });
}

/**
 * The Orchestrator, in the first namespace, on a fixed port there (the namespace is this run's
 * alone): a restarted one is found where the nodes knew it.
 */
function startOrchestrator(): Promise<ServiceProcess> {
  const o = net.hosts[0]!;
  return startService(
    "orchestrator",
    [
      ...["--socket-dir", path.join(dir, "orch", "run")],
      ...["--data-dir", path.join(dir, "orch", "data")],
      ...["--listen", `0.0.0.0:${ORCH_PORT}`],
    ],
    {
      ...quiet,
      ...tlsOf("orch"),
      CONDUCTOR_ORCHESTRATOR_NODE_LEASE_SECONDS: String(LEASE_SECONDS),
    },
    BIN,
    o.spawn.bind(o) as typeof spawn,
  );
}

/** One call from Python's grpcio over TCP with the certificate of `name` (run inside `from`). */
async function pythonCall(
  from: NetHost,
  name: string,
  method: string,
  request: Uint8Array,
  kind: "unary" | "stream" = "unary",
): Promise<{ code: number; stdout: string; stderr: string }> {
  const f = certs.files(name);
  return from.exec(PYTHON, [
    RAW_CALL,
    ...["--tls", `${f.caFile},${f.certFile},${f.keyFile}`],
    ...[orchAddr, method, Buffer.from(request).toString("base64"), kind],
  ]);
}

async function nodeStates(): Promise<Record<string, NodeState>> {
  const { nodes: list } = await client.listNodes({});
  return Object.fromEntries(list.map((n) => [n.name, n.state]));
}

/** The node a task's agent is on (joined nodes' agent ids are `<node>:agent-N`). */
function nodeOf(task: Task): string {
  return task.agentId.split(":")[0]!;
}

beforeAll(async () => {
  net = await makeNet(3);
  const [o, a, b] = net.hosts as [NetHost, NetHost, NetHost];
  dir = mkdtempSync(path.join(tmpdir(), "conductor-fleet-"));
  certs = await makeCerts(path.join(dir, "certs"), [
    { role: "orchestrator", name: "orch", ips: [o.address] },
    { role: "broker", name: "broker", ips: [o.address] },
    { role: "agent-host", name: "node-a" },
    { role: "agent-host", name: "node-b" },
    { role: "client", name: "alice" },
  ]);
  orch = await startOrchestrator();
  orchAddr = `${o.address}:${ORCH_PORT}`;
  broker = await startService(
    "broker",
    [
      ...["--socket-dir", path.join(dir, "broker", "run")],
      ...["--data-dir", path.join(dir, "broker", "data")],
    ],
    { ...quiet, ...tlsOf("broker"), CONDUCTOR_BROKER_LISTEN: "0.0.0.0:0" },
    BIN,
    o.spawn.bind(o) as typeof spawn,
  );
  brokerAddr = `${o.address}:${String(broker.ready["broker_listen"]).split(":").pop()}`;
  client = createClient(
    OrchestratorService,
    unixTransport(path.join(dir, "orch", "run", "orchestrator.sock")),
  );
  await startNode("node-a", a, { zone: "a" });
  await startNode("node-b", b, { zone: "b", gpu: "true" });
  await vi.waitFor(
    async () => {
      const states = await nodeStates();
      expect(states).toEqual({ "node-a": NodeState.READY, "node-b": NodeState.READY });
    },
    { timeout: 60_000, interval: 100 },
  );
}, 180_000);

afterAll(async () => {
  for (const n of nodes.values()) await n.proc.stop().catch(() => undefined);
  await orch?.stop().catch(() => undefined);
  await broker?.stop().catch(() => undefined);
  await net?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
}, 60_000);

describe("a fleet joined over TCP with mutual TLS", () => {
  it("spreads 12 tasks over both nodes, with agent ids unique across the fleet", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const { task } = await client.submitTask({
        spec: spec({
          prompt: scripted([{ bash: "sleep 1" }, { text: `done ${i}` }]),
          allowedTools: ["Bash"],
        }),
      });
      ids.push(task!.id);
    }
    const ended = await Promise.all(ids.map((id) => waitForEnd(client, id, 120_000)));
    expect(ended.map((t) => TaskState[t.state])).toEqual(Array(12).fill("SUCCEEDED"));
    expect(new Set(ended.map(nodeOf))).toEqual(new Set(["node-a", "node-b"]));
    const { agents } = await client.listAgents({});
    const agentIds = agents.map((a) => a.id).sort();
    expect(agentIds).toEqual([
      "node-a:agent-1",
      "node-a:agent-2",
      "node-b:agent-1",
      "node-b:agent-2",
    ]);
  }, 180_000);

  it("serves a Python grpcio client, buf curl and curl --cert with JSON over TCP", async () => {
    const b = nodes.get("node-b")!.host;
    const submit = create(SubmitTaskRequestSchema, {
      spec: spec({ prompt: scripted([{ text: "from python" }]) }),
    });
    const sent = await pythonCall(
      b,
      "alice",
      "/conductor.v1.OrchestratorService/SubmitTask",
      toBinary(SubmitTaskRequestSchema, submit),
    );
    expect(sent.stderr).toBe("");
    const id = fromBinary(SubmitTaskResponseSchema, Buffer.from(sent.stdout.trim(), "base64")).task!
      .id;
    const watched = await pythonCall(
      b,
      "alice",
      "/conductor.v1.OrchestratorService/WatchTask",
      toBinary(WatchTaskRequestSchema, create(WatchTaskRequestSchema, { id })),
      "stream",
    );
    expect(watched.code).toBe(0);
    const events = watched.stdout
      .trim()
      .split("\n")
      .map((l) => fromBinary(WatchTaskResponseSchema, Buffer.from(l, "base64")).event!);
    const last = events.at(-1)!;
    expect(last.kind.case === "stateChange" && last.kind.value.state).toBe(TaskState.SUCCEEDED);

    const f = certs.files("alice");
    const url = `https://${orchAddr}/conductor.v1.OrchestratorService/GetStats`;
    const curl = await b.exec("curl", [
      ...[
        "-sS",
        "--fail-with-body",
        "--cacert",
        f.caFile,
        "--cert",
        f.certFile,
        "--key",
        f.keyFile,
      ],
      ...["-H", "Content-Type: application/json", "-d", "{}", url],
    ]);
    expect(curl.stderr).toBe("");
    expect(Number(stats(curl.stdout)["TASK_STATE_SUCCEEDED"])).toBeGreaterThanOrEqual(13);

    const buf = await b.exec(BUF, [
      ...["curl", "--protocol", "grpc", "--reflect", "--cacert", f.caFile],
      ...["--cert", f.certFile, "--key", f.keyFile, "-d", "{}", url],
    ]);
    expect(buf.stderr).toBe("");
    expect(Number(stats(buf.stdout)["TASK_STATE_SUCCEEDED"])).toBeGreaterThanOrEqual(13);
  }, 120_000);

  it("refuses connections without a good certificate, and calls a role may not make", async () => {
    const b = nodes.get("node-b")!.host;
    const ca = certs.caFile;
    const url = `https://${orchAddr}/conductor.v1.OrchestratorService/GetStats`;
    const curl = (extra: string[]) =>
      b.exec("curl", [
        "-sS",
        "--cacert",
        ca,
        ...extra,
        "-H",
        "Content-Type: application/json",
        "-d",
        "{}",
        url,
      ]);
    // No client certificate, another CA's, an expired one: the handshake fails, nothing answers.
    const none = await curl([]);
    expect(none.code).not.toBe(0);
    expect(none.stdout).toBe("");
    const other = await foreignCa(path.join(dir, "other-ca"), "client", "mallory");
    const foreign = await curl(["--cert", other.certFile, "--key", other.keyFile]);
    expect(foreign.code).not.toBe(0);
    expect(foreign.stdout).toBe("");
    const old = await expiredCert(path.join(dir, "expired"), certs.dir, "client", "old");
    const expired = await curl(["--cert", old.certFile, "--key", old.keyFile]);
    expect(expired.code).not.toBe(0);
    expect(expired.stdout).toBe("");

    // An agent host registering as another node.
    const asOther = await pythonCall(
      b,
      "node-a",
      "/conductor.v1.NodeService/RegisterNode",
      toBinary(RegisterNodeRequestSchema, create(RegisterNodeRequestSchema, { name: "node-b" })),
    );
    expect(asOther.stderr).toMatch(
      /^ERROR PERMISSION_DENIED .*agent-host\/node-a may speak only for node "node-a", not for "node-b"/m,
    );
    // A second AgentHost with node-a's certificate while node-a holds its lease.
    const twin = await pythonCall(
      b,
      "node-a",
      "/conductor.v1.NodeService/RegisterNode",
      toBinary(
        RegisterNodeRequestSchema,
        create(RegisterNodeRequestSchema, { name: "node-a", instanceId: "a-twin" }),
      ),
    );
    expect(twin.stderr).toMatch(
      /^ERROR ALREADY_EXISTS node node-a is already joined by another AgentHost/m,
    );
    // A node claiming impossible resources.
    const absurd = await pythonCall(
      b,
      "node-a",
      "/conductor.v1.NodeService/RegisterNode",
      toBinary(
        RegisterNodeRequestSchema,
        create(RegisterNodeRequestSchema, {
          name: "node-a",
          instanceId: "x",
          capacity: { cpus: -5 },
        }),
      ),
    );
    expect(absurd.stderr).toMatch(/^ERROR INVALID_ARGUMENT capacity.cpus must be from 0/m);
    expect((await nodeStates())["node-a"]).toBe(NodeState.READY);
    // A client calling the node API.
    const clientAsNode = await pythonCall(
      b,
      "alice",
      "/conductor.v1.NodeService/Heartbeat",
      toBinary(HeartbeatRequestSchema, create(HeartbeatRequestSchema, { name: "alice" })),
    );
    expect(clientAsNode.stderr).toMatch(
      /^ERROR PERMISSION_DENIED spiffe:\/\/conductor\/client\/alice may not call conductor.v1.NodeService\/Heartbeat/m,
    );
    // An agent host reporting a result for a task it was not assigned.
    const { task } = await client.submitTask({
      spec: spec({ prompt: scripted([{ text: "on b" }]), nodeSelector: { zone: "b" } }),
    });
    const done = await waitForEnd(client, task!.id, 60_000);
    expect(nodeOf(done)).toBe("node-b");
    const report = create(ReportOutcomeRequestSchema, {
      name: "node-a",
      run: { taskId: done.id, attempt: 1 },
      outcome: create(RunOutcomeSchema, { state: TaskState.SUCCEEDED }),
    });
    const forged = await pythonCall(
      b,
      "node-a",
      "/conductor.v1.NodeService/ReportOutcome",
      toBinary(ReportOutcomeRequestSchema, report),
    );
    expect(forged.stderr).toMatch(/^ERROR (PERMISSION_DENIED|FAILED_PRECONDITION) /m);
    expect((await client.getTask({ id: done.id })).task!.result!.text).toBe(done.result!.text);
    // An "outcome" that is no end (RUNNING), even from the node that ran it.
    const notAnEnd = create(ReportOutcomeRequestSchema, {
      name: "node-b",
      run: { taskId: done.id, attempt: 1 },
      outcome: create(RunOutcomeSchema, { state: TaskState.RUNNING }),
    });
    const running = await pythonCall(
      b,
      "node-b",
      "/conductor.v1.NodeService/ReportOutcome",
      toBinary(ReportOutcomeRequestSchema, notAnEnd),
    );
    expect(running.stderr).toMatch(/^ERROR INVALID_ARGUMENT outcome.state must be an end/m);
  }, 120_000);

  it("schedules by node_selector and resources, and not onto a drained node", async () => {
    const { task } = await client.submitTask({
      spec: spec({ prompt: scripted([{ text: "gpu" }]), nodeSelector: { gpu: "true" } }),
    });
    expect(nodeOf(await waitForEnd(client, task!.id, 60_000))).toBe("node-b");
    const big = client.submitTask({
      spec: spec({ prompt: "too big", resources: { memoryBytes: 1n << 60n } }),
    });
    await expect(big).rejects.toMatchObject({ code: Code.FailedPrecondition });
    await expect(big).rejects.toThrow(/no node .*memory/);

    await client.drainNode({ name: "node-b" });
    try {
      expect((await nodeStates())["node-b"]).toBe(NodeState.DRAINING);
      const ids = [];
      for (let i = 0; i < 4; i++) {
        const { task: t } = await client.submitTask({
          spec: spec({ prompt: scripted([{ text: `d${i}` }]) }),
        });
        ids.push(t!.id);
      }
      const ended = await Promise.all(ids.map((id) => waitForEnd(client, id, 60_000)));
      expect(ended.map(nodeOf)).toEqual(["node-a", "node-a", "node-a", "node-a"]);
    } finally {
      await client.undrainNode({ name: "node-b" });
    }
  }, 120_000);

  it("lets an agent on one node and an agent on the other exchange messages through the Broker", async () => {
    const tools = ["Write", "mcp__conductor"];
    const b = await client.submitTask({
      spec: spec({
        allowedTools: tools,
        nodeSelector: { zone: "b" },
        prompt: scripted([
          { tool: { name: "mcp__conductor__read_messages", input: { wait_seconds: 60 } } },
          {
            tool: {
              name: "mcp__conductor__reply",
              input: { correlation_id: "fleet-1", message: "pong from node b" },
            },
          },
          { text: "B answered" },
        ]),
      }),
    });
    await waitForState(client, b.task!.id, TaskState.RUNNING, 60_000);
    const agentB = (await client.getTask({ id: b.task!.id })).task!.agentId;
    expect(agentB).toMatch(/^node-b:/);
    const a = await client.submitTask({
      spec: spec({
        allowedTools: tools,
        nodeSelector: { zone: "a" },
        prompt: scripted([
          {
            tool: {
              name: "mcp__conductor__request",
              input: {
                to: agentB,
                message: "ping from node a",
                correlation_id: "fleet-1",
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
    expect(nodeOf(endedA)).toBe("node-a");
    const reply = readFileSync(
      path.join(nodes.get("node-a")!.dataDir, "agents", endedA.agentId, "workspace", "reply.txt"),
      "utf8",
    );
    expect(reply).toBe(`Reply from ${agentB} (correlation id fleet-1):\npong from node b`);
  }, 180_000);

  it("refuses a node credentials for another node's agents", async () => {
    const b = nodes.get("node-b")!.host;
    const f = certs.files("node-b");
    const ask = (agentId: string) =>
      b.exec(PYTHON, [
        RAW_CALL,
        ...["--tls", `${f.caFile},${f.certFile},${f.keyFile}`, brokerAddr],
        "/conductor.v1.BrokerNodeService/IssueAgentCredential",
        Buffer.from(
          toBinary(
            IssueAgentCredentialRequestSchema,
            create(IssueAgentCredentialRequestSchema, { agentId }),
          ),
        ).toString("base64"),
        "unary",
      ]);
    expect((await ask("node-b:agent-1")).code).toBe(0);
    expect((await ask("node-a:agent-1")).stderr).toMatch(
      /^ERROR PERMISSION_DENIED .*only for its own agents/m,
    );
  }, 60_000);

  it("picks up a node's replaced certificate files without a restart", async () => {
    const node = nodes.get("node-a")!;
    const expiry = async () => {
      const { nodes: list } = await client.listNodes({});
      return ms(list.find((n) => n.name === "node-a")!.certificateExpireTime);
    };
    const DAY = 86_400_000;
    expect(await expiry()).toBeGreaterThan(Date.now() + 300 * DAY);
    await certs.issue({ role: "agent-host", name: "node-a", days: 30 });
    await vi.waitFor(async () => expect(await expiry()).toBeLessThan(Date.now() + 31 * DAY), {
      timeout: 30_000,
      interval: 100,
    });
    expect(node.proc.proc.exitCode).toBeNull();
    await vi.waitFor(async () => expect((await nodeStates())["node-a"]).toBe(NodeState.READY), {
      timeout: 30_000,
      interval: 100,
    });
  }, 60_000);

  /** How a node is taken out of the fleet mid-task, and brought back. */
  const outages = {
    "cut off (link down)": {
      file: "beats-cut.txt",
      cut: (n: FleetNode) => n.host.linkDown(),
      restore: (n: FleetNode) => n.host.linkUp(),
    },
    // Frozen, it cannot fence itself: its runs' lifelines go silent and end them.
    "frozen (SIGSTOP)": {
      file: "beats-frozen.txt",
      cut: async (n: FleetNode) => void n.proc.proc.kill("SIGSTOP"),
      restore: async (n: FleetNode) => void n.proc.proc.kill("SIGCONT"),
    },
  };

  for (const [how, outage] of Object.entries(outages)) {
    it(`a node ${how} mid-task has its run ended before its lease lapses; the task is retried on the other node, never running twice at once`, async () => {
      const marker = `fleet-cut-${net.id}`;
      // Ten lines a second with the time (ms) in the workspace, for up to 60 s.
      const loop = `for i in $(seq 1 600); do echo "$(date +%s%3N) ${marker}" >> ${outage.file}; sleep 0.1; done`;
      const { task } = await client.submitTask({
        spec: spec({
          prompt: scripted([{ bash: loop }, { text: "beat" }]),
          allowedTools: ["Bash"],
          maxAttempts: 2,
          timeoutSeconds: 300,
        }),
      });
      await waitForState(client, task!.id, TaskState.RUNNING, 60_000);
      const running = (await client.getTask({ id: task!.id })).task!;
      const first = nodeOf(running);
      const other = first === "node-a" ? "node-b" : "node-a";
      const cut = nodes.get(first)!;
      const beats = (node: string) => {
        const files = workspaceFiles(nodes.get(node)!.dataDir, outage.file);
        return files.flatMap((f) =>
          readFileSync(f, "utf8")
            .trim()
            .split("\n")
            .map((l) => Number(l.split(" ")[0])),
        );
      };
      await vi
        .waitFor(() => expect(beats(first).length).toBeGreaterThan(3), {
          timeout: 30_000,
          interval: 100,
        })
        .catch(async (e: Error) => {
          throw new Error(`${e.message}; the run on ${first}:\n${await diagnosis(task!.id)}`);
        });
      await outage.cut(cut);
      try {
        const retried = await vi.waitFor(
          async () => {
            const t = (await client.getTask({ id: task!.id })).task!;
            expect(t.attempts).toBe(2);
            expect(t.state).toBe(TaskState.RUNNING);
            return t;
          },
          { timeout: 60_000, interval: 100 },
        );
        expect(nodeOf(retried)).toBe(other);
        // The lost node's run ended there, with nothing of it left (even while its AgentHost
        // is still frozen) ...
        const runOnCut = (pid: number) =>
          processesWith(`CONDUCTOR_AGENT_ID=${running.agentId}`).includes(pid);
        await vi.waitFor(
          () => expect(processesWith(`CONDUCTOR_TASK_ID=${task!.id}`).filter(runOnCut)).toEqual([]),
          { timeout: 30_000, interval: 100 },
        );
        // ... and before the Orchestrator took the node as lost: nothing written after that.
        const events = [];
        for await (const r of client.watchTask({ id: task!.id })) {
          events.push(r.event!);
          if (r.event!.kind.case === "stateChange" && r.event!.kind.value.attempt === 2) break;
        }
        const lostAt = events.find(
          (e) =>
            e.kind.case === "stateChange" && e.kind.value.reason.includes(`node ${first} lost`),
        );
        expect(lostAt).toBeDefined();
        const lastOnCut = Math.max(...beats(first));
        expect(lastOnCut).toBeLessThan(ms(lostAt!.time));
        await vi.waitFor(() => expect(beats(other).length).toBeGreaterThan(0), {
          timeout: 30_000,
          interval: 100,
        });
        expect(Math.min(...beats(other))).toBeGreaterThan(lastOnCut);
      } finally {
        await outage.restore(cut);
      }
      await client.cancelTask({ id: task!.id }).catch(() => undefined);
      // Back, it joins again, and takes new work.
      await vi.waitFor(async () => expect((await nodeStates())[first]).toBe(NodeState.READY), {
        timeout: 60_000,
        interval: 100,
      });
      await client.drainNode({ name: other });
      try {
        const { task: t } = await client.submitTask({
          spec: spec({ prompt: scripted([{ text: "back" }]) }),
        });
        expect(nodeOf(await waitForEnd(client, t!.id, 60_000))).toBe(first);
      } finally {
        await client.undrainNode({ name: other });
      }
    }, 240_000);
  }

  it("an Orchestrator restarted mid-task takes up a joined node's run, which goes on and succeeds", async () => {
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([
          { bash: "for i in $(seq 1 50); do echo $i >> restart.txt; sleep 0.1; done" },
          { text: "finished across the restart" },
        ]),
        allowedTools: ["Bash"],
        maxAttempts: 2,
      }),
    });
    await waitForState(client, task!.id, TaskState.RUNNING, 60_000);
    const node = nodes.get(nodeOf((await client.getTask({ id: task!.id })).task!))!;
    await vi.waitFor(
      () => expect(workspaceFiles(node.dataDir, "restart.txt").length).toBeGreaterThan(0),
      { timeout: 30_000, interval: 100 },
    );
    const stopping = Date.now();
    await orch.stop();
    // A stopping Orchestrator lets its work go at once: the node's lease outlives the restart.
    expect(Date.now() - stopping).toBeLessThan((LEASE_SECONDS * 1000) / 4);
    orch = await startOrchestrator();
    const ended = await waitForEnd(client, task!.id, 60_000);
    expect(TaskState[ended.state]).toBe("SUCCEEDED");
    expect(ended.attempts).toBe(1);
    expect(ended.result?.text).toBe("finished across the restart");
  }, 120_000);

  it("a node's connections broken mid-task do not end its run: it goes on and reports how it ended", async () => {
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([
          { bash: "for i in $(seq 1 40); do echo $i >> broken.txt; sleep 0.1; done" },
          { text: "finished across the break" },
        ]),
        allowedTools: ["Bash"],
        maxAttempts: 2,
      }),
    });
    await waitForState(client, task!.id, TaskState.RUNNING, 60_000);
    const node = nodes.get(nodeOf((await client.getTask({ id: task!.id })).task!))!;
    await vi.waitFor(
      () => expect(workspaceFiles(node.dataDir, "broken.txt").length).toBeGreaterThan(0),
      { timeout: 30_000, interval: 100 },
    );
    // Every TCP connection of the node to the Orchestrator — its heartbeats and the tunnel
    // the run's stream is on — is reset (the socket-destroy of the node's own kernel).
    const [host, port] = orchAddr.split(":") as [string, string];
    const killed = await node.host.exec("/usr/bin/ss", ["-K", "dst", host, "dport", "=", port]);
    expect(killed.code).toBe(0);
    expect(killed.stdout.split("\n").filter((l) => l.startsWith("tcp")).length).toBeGreaterThan(1);
    const ended = await waitForEnd(client, task!.id, 60_000);
    expect(TaskState[ended.state]).toBe("SUCCEEDED");
    expect(ended.attempts).toBe(1);
    expect(ended.result?.text).toBe("finished across the break");
    const lines = readFileSync(workspaceFiles(node.dataDir, "broken.txt")[0]!, "utf8");
    expect(lines.trim().split("\n").length).toBe(40);
  }, 120_000);
});

/** GetStats' tasks by state, from its JSON (int64 counts are strings in JSON). */
function stats(json: string): Record<string, string> {
  return (JSON.parse(json) as { tasksByState: Record<string, string> }).tasksByState;
}

/** Files named `name` in any agent's workspace under a node's data folder. */
/** A failed wait's context: the task's state changes and the end of each node's log. */
async function diagnosis(id: string): Promise<string> {
  const lines: string[] = [];
  for (const e of (await client.listTaskEvents({ id })).events) {
    if (e.kind.case === "stateChange") {
      const c = e.kind.value;
      lines.push(`${TaskState[c.state]} attempt ${c.attempt}: ${c.reason}`);
    }
  }
  for (const [name, node] of nodes) lines.push(`--- ${name}:`, node.proc.stderr().slice(-3000));
  return lines.join("\n");
}

function workspaceFiles(dataDir: string, name: string): string[] {
  const agents = path.join(dataDir, "agents");
  if (!existsSync(agents)) return [];
  return readdirSync(agents)
    .map((a) => path.join(agents, a, "workspace", name))
    .filter((f) => existsSync(f));
}
