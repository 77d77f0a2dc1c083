/**
 * A world for Orchestrator tests: an AgentHostService the test plays (FakeAgentHost, on a real
 * Unix socket), Orchestrators served over real sockets on temp folders, and WatchTask helpers.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type HandlerContext,
} from "@connectrpc/connect";
import { OrchestratorService } from "../gen/conductor/v1/orchestrator_pb.js";
import { Orchestrator, type OrchestratorOptions } from "../services/orchestrator/orchestrator.ts";
import { orchestratorRoutes } from "../services/orchestrator/routes.ts";
import { silentLogger } from "../services/shared/log.ts";
import {
  AgentHostService,
  type RunTaskRequest,
  type RunTaskResponseSchema,
} from "../gen/conductor/v1/agent_host_pb.js";
import { AgentState } from "../gen/conductor/v1/agent_pb.js";
import {
  TaskSpecSchema,
  TaskState,
  type Task,
  type TaskEvent,
} from "../gen/conductor/v1/task_pb.js";
import { serveUnix, unixTransport, type UnixServer } from "../services/shared/transport.ts";

export type Step = MessageInitShape<typeof RunTaskResponseSchema>;
/** How the fake AgentHost plays one RunTask. */
export type Play = (
  req: RunTaskRequest,
  ctx: HandlerContext,
  host: FakeAgentHost,
) => AsyncGenerator<Step>;

/** The run has started: the agent reports the task until the test says otherwise. */
export function started(req: RunTaskRequest, host: FakeAgentHost): Step {
  host.setAgent(req.taskId);
  return { kind: { case: "started", value: { agentId: req.agentId } } };
}

/** Starts, then runs until the stream goes; the "CLI" stays busy after (an orphan). */
export const hang: Play = async function* (req, ctx, host) {
  yield started(req, host);
  await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
};

/** Starts and succeeds; the agent is idle again after. */
export const succeed: Play = async function* (req, _ctx, host) {
  yield started(req, host);
  host.setAgent("");
  yield {
    kind: {
      case: "outcome",
      value: { state: TaskState.SUCCEEDED, result: { text: `done in attempt ${req.attempt}` } },
    },
  };
};

/** Starts, then the stream fails while the host lives on and its agent keeps running. */
export const breakOff: Play = async function* (req, _ctx, host) {
  yield started(req, host);
  throw new ConnectError("the stream broke", Code.Internal);
};

/** Refuses before running anything, like an AgentHost whose agent is busy. */
export const refuse: Play = (req) => {
  throw new ConnectError(`agent ${req.agentId} is not idle`, Code.FailedPrecondition);
};

/**
 * An AgentHostService served by the test on a real Unix socket, with one agent whose state the
 * test sets; RunTask plays whatever `plays` holds next, and calls are recorded.
 */
export class FakeAgentHost implements AsyncDisposable {
  readonly runs: { req: RunTaskRequest; at: number }[] = [];
  readonly cancelRuns: string[] = [];
  plays: Play[];
  private taskId: string;
  private server: UnixServer | undefined;

  constructor(runningTask = "", plays: Play[] = [succeed]) {
    this.taskId = runningTask;
    this.plays = plays;
  }

  /** What agent-1 runs ("" for idle), as ListAgents reports it. */
  setAgent(taskId: string): void {
    this.taskId = taskId;
  }

  /** Whether ListAgents reports agent-1 FAILED (lost, or being replaced). */
  failed = false;

  async serve(socketPath: string): Promise<this> {
    this.server = await serveUnix({
      socketPath,
      services: [AgentHostService],
      routes: (router) =>
        router.service(AgentHostService, {
          listAgents: () => ({
            agents: [
              {
                id: "agent-1",
                nodeId: "fake",
                state: this.failed
                  ? AgentState.FAILED
                  : this.taskId
                    ? AgentState.BUSY
                    : AgentState.IDLE,
                taskId: this.taskId,
              },
            ],
          }),
          runTask: (req, ctx) => {
            this.runs.push({ req, at: Date.now() });
            const play = this.plays.length > 1 ? this.plays.shift()! : this.plays[0]!;
            return play(req, ctx, this);
          },
          cancelRun: (req) => {
            this.cancelRuns.push(req.taskId);
            return { found: this.taskId === req.taskId };
          },
          getPatch: (req, ctx) => this.patch(req.headCommit, ctx.signal),
        }),
    });
    return this;
  }

  /** GetPatch streams open now. */
  patchesOpen = 0;

  /** A patch that is the head commit's name, then never ends (until the call goes). */
  private async *patch(head: string, signal: AbortSignal) {
    this.patchesOpen++;
    try {
      yield { chunk: new TextEncoder().encode(head) };
      await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
    } finally {
      this.patchesOpen--;
    }
  }

  /** Like kill -9: every connection is cut and the socket goes away. */
  async kill(): Promise<void> {
    await this.server?.close();
    this.server = undefined;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.kill();
  }
}

/** A task's events as WatchTask streams them, collected in the background. */
export class Watch {
  readonly events: TaskEvent[] = [];
  private readonly abort = new AbortController();
  private readonly done: Promise<void>;

  constructor(client: Client<typeof OrchestratorService>, id: string) {
    this.done = (async () => {
      try {
        for await (const { event } of client.watchTask({ id }, { signal: this.abort.signal }))
          if (event) this.events.push(event);
      } catch (e) {
        if (!this.abort.signal.aborted) throw e;
      }
    })();
  }

  changes() {
    return this.events.flatMap((e) =>
      e.kind.case === "stateChange" ? [{ ...e.kind.value, at: ms(e) }] : [],
    );
  }

  reasons(): string[] {
    return this.changes().map((c) => c.reason);
  }

  async waitFor(what: string, pred: (reason: string, state: TaskState) => boolean) {
    await until(() => this.changes().some((c) => pred(c.reason, c.state)), what);
    return this.changes().find((c) => pred(c.reason, c.state))!;
  }

  /** Resolves when the stream ends (the task ended). */
  ended(): Promise<void> {
    return this.done;
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.done;
  }
}

function ms(e: TaskEvent): number {
  return Number(e.time?.seconds ?? 0n) * 1000 + Math.floor((e.time?.nanos ?? 0) / 1e6);
}

/** Re-checks a condition every 10 ms, for at most `timeoutMs`. */
export async function until(cond: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** One test's world: a temp folder, host sockets, and Orchestrators served over a socket. */
export class World implements AsyncDisposable {
  readonly dir = mkdtempSync(path.join(tmpdir(), "conductor-orch-"));
  readonly hostSocket = path.join(this.dir, "run", "agent-host.sock");
  readonly otherHostSocket = path.join(this.dir, "run", "agent-host-2.sock");
  private readonly cleanups: (() => Promise<void>)[] = [];
  orch!: Orchestrator;
  client!: Client<typeof OrchestratorService>;
  private orchServer: UnixServer | undefined;

  async startOrchestrator(opts: Partial<OrchestratorOptions> = {}): Promise<Orchestrator> {
    this.orch = new Orchestrator({
      dataDir: path.join(this.dir, "data"),
      agentHosts: [this.hostSocket],
      maxWorkers: 10,
      defaultMaxAttempts: 1,
      retryBackoffMs: 10,
      maxPromptBytes: 10_000,
      rpcTimeoutMs: 2_000,
      defaultTimeoutMs: 60_000,
      pollIntervalMs: 25,
      log: silentLogger,
      ...opts,
    });
    this.orch.start();
    const socketPath = path.join(this.dir, "run", "orchestrator.sock");
    this.orchServer = await serveUnix({
      socketPath,
      services: [OrchestratorService],
      routes: orchestratorRoutes(this.orch),
    });
    this.client = createClient(OrchestratorService, unixTransport(socketPath));
    return this.orch;
  }

  async stopOrchestrator(): Promise<void> {
    await this.orchServer?.close();
    this.orchServer = undefined;
    await this.orch.close();
  }

  async host(socketPath: string, host = new FakeAgentHost()): Promise<FakeAgentHost> {
    await host.serve(socketPath);
    this.cleanups.push(() => host.kill());
    return host;
  }

  async submit(maxAttempts: number): Promise<{ id: string; watch: Watch }> {
    const spec = create(TaskSpecSchema, { prompt: "do the work", maxAttempts });
    const { task } = await this.client.submitTask({ spec });
    const watch = new Watch(this.client, task!.id);
    this.cleanups.push(() => watch.stop());
    return { id: task!.id, watch };
  }

  async task(id: string): Promise<Task> {
    return (await this.client.getTask({ id })).task!;
  }

  /** Waits for `n` more polls of the hosts to have begun and ended. */
  async polls(n: number): Promise<void> {
    const target = this.orch.hosts.generation + n + 1;
    await until(() => this.orch.hosts.generation >= target, `${n} polls of the agent hosts`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const fn of this.cleanups.reverse()) await fn();
    if (this.orchServer) await this.stopOrchestrator();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
