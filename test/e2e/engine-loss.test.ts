/**
 * A container engine that disappears while an agent's container is being waited on (and a
 * task runs in it) must not end the service: the affected agents are reported lost, the run
 * ends (in the container too), AgentHost calls that need the engine answer UNAVAILABLE naming
 * it, and when the engine is back the agents are too. The engine is reached through a socat
 * relay of the test's own, which the test cuts and restores.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentHostService } from "../../gen/conductor/v1/agent_host_pb.js";
import { AgentState } from "../../gen/conductor/v1/agent_pb.js";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { unixTransport } from "../../services/shared/transport.ts";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import {
  eventually,
  scripted,
  spec,
  startConductor,
  testRuntimes,
  waitForEnd,
  waitForState,
  type Conductor,
} from "../harness.ts";

const ENGINE_SOCKETS: Record<string, string> = {
  docker: "/var/run/docker.sock",
  podman: "/run/podman/podman.sock",
};
const containerRuntimes = testRuntimes().filter((r) => r in ENGINE_SOCKETS);

/** A socat relay in front of an engine's socket that a test can cut (with every connection) and restore. */
class Relay {
  private proc: ChildProcess | undefined;
  readonly socketPath: string;
  private readonly target: string;
  constructor(socketPath: string, target: string) {
    this.socketPath = socketPath;
    this.target = target;
  }

  async start(): Promise<void> {
    await this.listen(`UNIX-CONNECT:${this.target}`);
  }

  /**
   * An engine that stops answering, its connections held open (frozen: SIGSTOP, as a wedged or
   * stopped engine): calls under way get nothing more, new ones are taken and never answered.
   */
  freeze(): void {
    if (this.proc?.pid) process.kill(-this.proc.pid, "SIGSTOP");
  }

  thaw(): void {
    if (this.proc?.pid) process.kill(-this.proc.pid, "SIGCONT");
  }

  /** An engine that takes every connection and never answers one (at most 180 s). */
  async blackHole(): Promise<void> {
    await this.listen("EXEC:sleep 180");
  }

  private async listen(to: string): Promise<void> {
    await this.cut(); // one relay at a time: a second would outlive the test
    rmSync(this.socketPath, { force: true });
    // Its own process group: cutting it ends the forked children holding open connections.
    this.proc = spawn("socat", [`UNIX-LISTEN:${this.socketPath},fork,mode=600`, to], {
      detached: true,
      stdio: "ignore",
    });
    await eventually(async () => (existsSync(this.socketPath) ? true : undefined), "the relay");
  }

  async cut(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((resolve) => p.once("exit", resolve));
    process.kill(-p.pid!, "SIGKILL");
    await exited;
    rmSync(this.socketPath, { force: true });
  }
}

describe.runIf(containerRuntimes.length > 0).each(containerRuntimes)(
  "the %s engine lost and back",
  (runtime) => {
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-engine-loss-"));
    const relay = new Relay(path.join(dir, "engine.sock"), ENGINE_SOCKETS[runtime]!);
    const node = `loss-${randomUUID().slice(0, 8)}`;
    const engine = (...args: string[]) => promisify(execFile)(runtime, args);
    let model: FakeModel;
    let conductor: Conductor;
    /** The agent comes back IDLE, and runs a task again. */
    const backAndWorking = async (text: string) => {
      const { client } = conductor;
      await eventually(
        async () => {
          const { agents } = await client.listAgents({});
          return agents.length === 1 && agents[0]!.state === AgentState.IDLE ? true : undefined;
        },
        "the agent back",
        60_000,
      );
      const again = await client.submitTask({ spec: spec({ prompt: scripted([{ text }]) }) });
      const done = await waitForEnd(client, again.task!.id);
      expect(done.state, done.result?.error).toBe(TaskState.SUCCEEDED);
    };

    beforeAll(async () => {
      await relay.start();
      model = await startFakeModel();
      conductor = await startConductor({
        agents: 1,
        runtime,
        modelUrl: model.url,
        env: {
          CONDUCTOR_RUNTIME_SOCKET: relay.socketPath,
          CONDUCTOR_ORCHESTRATOR_NODE_ID: node,
        },
      });
    });
    afterAll(async () => {
      await relay.start(); // the engine back, so the services can remove their containers
      await conductor?.close();
      await model?.close();
      await relay.cut();
      rmSync(dir, { recursive: true, force: true });
      const left = (await engine("ps", "-aq", "--filter", `label=dev.conductor.node=${node}`))
        .stdout;
      expect(left.trim()).toBe("");
    });

    it("keeps the service up, reports the agent lost, ends its run, and recovers", async () => {
      const { client } = conductor;
      const up = conductor.processes[0]!;
      const { task } = await client.submitTask({
        spec: spec({ maxAttempts: 1, prompt: scripted([{ text: "never", delay_ms: 120_000 }]) }),
      });
      await waitForState(client, task!.id, TaskState.RUNNING);
      const container = (
        await engine("ps", "-q", "--filter", `label=dev.conductor.node=${node}`)
      ).stdout.trim();
      expect(container).not.toBe("");

      await relay.cut();

      // The run ends, and says why, instead of hanging for the model's two minutes.
      const ended = await waitForEnd(client, task!.id, 60_000);
      expect(ended.state).toBe(TaskState.FAILED);
      expect(ended.result?.error).toMatch(
        /engine could not be reached .*cannot reach .* at .*engine\.sock/,
      );
      // Nothing of the run goes on inside the container (seen through the engine's own socket):
      // its lifeline was cut as it ended, and what is left of it dies of that within moments.
      await eventually(
        async () => {
          const top = (await engine("top", container)).stdout;
          return /claude/.test(top) ? undefined : true;
        },
        "the run's processes gone from the container",
        15_000,
      );
      // The agent is reported lost, and the AgentHost answers UNAVAILABLE naming the engine.
      await eventually(async () => {
        const { agents } = await client.listAgents({});
        return agents.length === 1 && agents[0]!.state === AgentState.FAILED ? true : undefined;
      }, "the agent reported lost");
      const host = createClient(
        AgentHostService,
        unixTransport(path.join(conductor.socketDir, "agent-host.sock")),
      );
      const refused = await host.startAgent({}).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(refused?.code).toBe(Code.Unavailable);
      expect(refused?.rawMessage).toContain(relay.socketPath);
      expect(up.proc.exitCode).toBeNull();

      await relay.start();

      await backAndWorking("back");
      expect(up.proc.exitCode).toBeNull();
    });

    it(
      "ends every task and comes back on an engine that restarts again and again",
      {
        timeout: 300_000,
      },
      async () => {
        const { client } = conductor;
        const up = conductor.processes[0]!;
        const ids: string[] = [];
        for (let i = 0; i < 3; i++) {
          const { task } = await client.submitTask({
            spec: spec({
              maxAttempts: 3,
              prompt: scripted([{ text: `flap ${i}`, delay_ms: 1500 }]),
            }),
          });
          ids.push(task!.id);
        }
        await waitForState(client, ids[0]!, TaskState.RUNNING);
        // Twelve restarts of the engine, as the relay makes them: gone 0.1-1.2 s, back 0.2-1 s
        // (the fault's own schedule, not a wait for anything).
        for (let i = 0; i < 12; i++) {
          await relay.cut();
          await sleep(100 + ((i * 397) % 1100));
          await relay.start();
          await sleep(200 + ((i * 211) % 800));
        }
        // None is left RUNNING or QUEUED for good: each ends, succeeded or failed saying why.
        for (const id of ids) {
          const t = await waitForEnd(client, id, 120_000);
          expect([TaskState.SUCCEEDED, TaskState.FAILED], t.result?.error).toContain(t.state);
          if (t.state === TaskState.FAILED) expect(t.result?.error).not.toBe("");
        }
        await backAndWorking("after the storm");
        expect(up.proc.exitCode).toBeNull();
      },
    );

    // One engine is enough: the AgentHost's handling is the same for both (about 90 s each).
    it.runIf(runtime === containerRuntimes[0])(
      "fails a run on an engine that stops answering, instead of leaving it RUNNING",
      {
        timeout: 300_000,
      },
      async () => {
        const { client } = conductor;
        const up = conductor.processes[0]!;
        const { task } = await client.submitTask({
          spec: spec({ maxAttempts: 1, prompt: scripted([{ text: "never", delay_ms: 120_000 }]) }),
        });
        await waitForState(client, task!.id, TaskState.RUNNING);
        relay.freeze();
        try {
          // Lost once three of the engine's probes time out (pings: 5 s each, every 5 s, about
          // 30-40 s), and the run ended with it.
          const ended = await waitForEnd(client, task!.id, 60_000);
          expect(ended.state).toBe(TaskState.FAILED);
          expect(ended.result?.error).toMatch(/engine could not be reached/);
          expect(up.proc.exitCode).toBeNull();
        } finally {
          relay.thaw();
        }
        await backAndWorking("back again");
      },
    );

    it.runIf(runtime === containerRuntimes[0])(
      "stops cleanly through a short engine outage, and within bounds on a hung engine",
      { timeout: 180_000 },
      async () => {
        const left = async () =>
          (await engine("ps", "-aq", "--filter", `label=dev.conductor.node=${node}`)).stdout.trim();
        // Gone for a second as the stop begins: its containers are removed once it is back.
        await relay.cut();
        const stopping = conductor.processes[0]!.stop();
        await sleep(1000); // the outage's own length
        await relay.start();
        await stopping;
        expect(await left()).toBe("");

        // Hung for good: the stop ends all the same, within the stop grace (5 s) and 15 s more.
        await conductor.restart();
        await backAndWorking("once more");
        await relay.blackHole();
        try {
          const started = Date.now();
          await conductor.processes[0]!.stop();
          expect(Date.now() - started).toBeLessThan(30_000);
        } finally {
          await relay.start();
        }
        // Again hung, and a second SIGTERM (Ctrl-C twice): it stops at once, saying so.
        await conductor.restart();
        await backAndWorking("and again");
        await relay.blackHole();
        try {
          const up = conductor.processes[0]!;
          const exited = new Promise((resolve) => up.proc.once("exit", resolve));
          up.proc.kill("SIGTERM");
          await sleep(1000); // into the clean stop, which waits on the hung engine for 15 s or more
          const second = Date.now();
          up.proc.kill("SIGTERM");
          await exited;
          expect(Date.now() - second).toBeLessThan(5_000);
          expect(up.proc.exitCode).toBe(143);
          expect(up.stderr()).toContain("a second signal: stopping at once");
        } finally {
          await relay.start();
        }
        // What a stop left is taken up by the next start on the same data folder.
        await conductor.restart();
        await backAndWorking("and once more");
      },
    );
  },
);
