import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentState } from "../../gen/conductor/v1/agent_pb.js";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import {
  eventually,
  processesMatching,
  scripted,
  spec,
  startConductor,
  testRuntimes,
  waitForEnd,
  waitForState,
  type Conductor,
} from "../harness.ts";
import { makeRepository } from "../repositories.ts";

const run = promisify(execFile);
const containerRuntimes = testRuntimes().filter((r) => r !== "process");
const API_KEY = "sk-test-key-that-must-never-enter-a-container";

/** What only containers promise: the key stays outside, dead containers are replaced. */
// Skipped only when CONDUCTOR_TEST_RUNTIMES names no container runtime (an explicit opt-out).
describe.runIf(containerRuntimes.length > 0).each(containerRuntimes)(
  "agent containers on %s",
  (runtime) => {
    let model: FakeModel;
    let conductor: Conductor;
    const node = `test-${randomUUID().slice(0, 8)}`;
    const engine = (...args: string[]) => run(runtime, args, { maxBuffer: 16 * 1024 * 1024 });
    const containerOf = async (agentId: string) =>
      (
        await engine(
          "ps",
          "-q",
          "--filter",
          `label=dev.conductor.node=${node}`,
          "--filter",
          `label=dev.conductor.agent=${agentId}`,
        )
      ).stdout.trim();

    const stateOf = async (container: string) =>
      (await engine("inspect", "-f", "{{.State.Status}}", container)).stdout.trim();

    beforeAll(async () => {
      model = await startFakeModel();
      conductor = await startConductor({
        agents: 2,
        runtime,
        modelUrl: model.url,
        env: {
          ANTHROPIC_API_KEY: API_KEY,
          CONDUCTOR_ORCHESTRATOR_NODE_ID: node,
          // Room for the CLI (~200 MiB), not for the OOM test's hog.
          CONDUCTOR_AGENT_CONTAINER_MEMORY: "512m",
          CONDUCTOR_ORCHESTRATOR_RETRY_BACKOFF_SECONDS: "0.2",
        },
      });
    });
    afterAll(async () => {
      await conductor?.close();
      await model?.close();
      // Nothing of this node is left behind.
      const left = (
        await engine("ps", "-aq", "--filter", `label=dev.conductor.node=${node}`)
      ).stdout.trim();
      expect(left).toBe("");
    });

    it("keeps the API key out of every container while tasks reach the model through the proxy", async () => {
      const { client } = conductor;
      const { task } = await client.submitTask({
        spec: spec({
          prompt: scripted([
            { write: { path: "proof.txt", content: "via proxy" } },
            { text: "ok" },
          ]),
        }),
      });
      const ended = await waitForEnd(client, task!.id);
      expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
      // The model saw the real key: the proxy added it on the way out.
      expect(model.requests.some((r) => r.headers["x-api-key"] === API_KEY)).toBe(true);
      const { agents } = await client.listAgents({});
      for (const agent of agents) {
        const id = await containerOf(agent.id);
        expect(id).not.toBe("");
        const inspect = (await engine("inspect", id)).stdout;
        expect(inspect).not.toContain(API_KEY);
        const env = (await engine("exec", id, "env")).stdout;
        expect(env).not.toContain(API_KEY);
        // No file the container can see (its image, tmpfs, mounted folders) holds the key.
        const search =
          'for d in /*; do case "$d" in /proc|/sys|/dev) ;; *) grep -rlsF "$1" "$d" ;; esac; done; true';
        const found = (await engine("exec", id, "sh", "-c", search, "sh", API_KEY)).stdout;
        expect(found).toBe("");
      }
    });

    it("replaces an agent whose container is killed mid-task and retries the task", async () => {
      const { client } = conductor;
      const { task } = await client.submitTask({
        spec: spec({
          maxAttempts: 2,
          prompt: scripted([{ text: "survived", delay_ms: 6000 }]), // room for a slow engine kill
        }),
      });
      await waitForState(client, task!.id, TaskState.RUNNING);
      const agentId = (await client.getTask({ id: task!.id })).task!.agentId;
      const before = await containerOf(agentId);
      await engine("kill", before);
      const ended = await waitForEnd(client, task!.id);
      expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
      expect(ended.attempts).toBe(2);
      let reason = "";
      for await (const { event } of client.watchTask({ id: task!.id })) {
        if (
          event?.kind.case === "stateChange" &&
          event.kind.value.state === TaskState.QUEUED &&
          event.kind.value.attempt === 1
        ) {
          reason ||= event.kind.value.reason;
        }
      }
      expect(reason).toMatch(/container died/);
      const after = await eventually(async () => {
        const id = await containerOf(agentId);
        return id && id !== before ? id : undefined;
      }, "the replacement container");
      expect(after).not.toBe(before);
    });

    it("gives no task to an agent whose container just died, and replaces it", async () => {
      const { client } = conductor;
      const long = async () =>
        (
          await client.submitTask({
            spec: spec({ maxAttempts: 2, prompt: scripted([{ text: "long", delay_ms: 6000 }]) }),
          })
        ).task!.id;
      const busy = [await long(), await long()];
      for (const id of busy) await waitForState(client, id, TaskState.RUNNING);
      // Queued behind both: once the killed agent's run ends, it must not be handed this one.
      const { task: next } = await client.submitTask({
        spec: spec({ maxAttempts: 1, prompt: scripted([{ text: "next" }]) }),
      });
      const agentId = (await client.getTask({ id: busy[0]! })).task!.agentId;
      await engine("kill", await containerOf(agentId));
      const ended = await waitForEnd(client, next!.id);
      expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
      for (const id of busy) {
        const t = await waitForEnd(client, id);
        expect(t.state, t.result?.error).toBe(TaskState.SUCCEEDED);
      }
    });

    it("runs a task submitted as its idle agents' containers die, on their replacements", async () => {
      const { client } = conductor;
      const { agents } = await client.listAgents({});
      const killed = await Promise.all(agents.map(async (a) => containerOf(a.id)));
      // Submitted the moment the kills are done: the engine's report of the deaths comes after.
      await Promise.all(killed.map((id) => engine("kill", id)));
      const submitted = await client.submitTask({
        spec: spec({ maxAttempts: 1, prompt: scripted([{ text: "fresh" }]) }),
      });
      const ended = await waitForEnd(client, submitted.task!.id);
      expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
      expect(killed).not.toContain(await containerOf(ended.agentId));
    });

    it("keeps trying to replace an agent whose replacement fails, and lists it FAILED meanwhile", async () => {
      const { client } = conductor;
      const agentId = (await client.listAgents({})).agents[1]!.id;
      const before = await containerOf(agentId);
      // The container's name is taken once it is gone: every try at a replacement fails (409).
      const [name, image] = (
        await engine("inspect", "-f", "{{.Name}} {{.Config.Image}}", before)
      ).stdout
        .trim()
        .split(" ");
      const squatter = name!.replace(/^\//, "");
      await engine("rename", before, `${squatter}-dead`);
      await engine("create", "--name", squatter, "--network", "none", image!, "true");
      try {
        await engine("kill", before);
        await eventually(async () => {
          const { agents } = await client.listAgents({});
          const a = agents.find((x) => x.id === agentId);
          return a?.state === AgentState.FAILED ? true : undefined;
        }, "the agent listed FAILED while it cannot be replaced");
        expect((await client.listAgents({})).agents).toHaveLength(2);
      } finally {
        await engine("rm", "-f", squatter);
      }
      await eventually(
        async () => {
          const { agents } = await client.listAgents({});
          const a = agents.find((x) => x.id === agentId);
          const id = await containerOf(agentId);
          return a?.state === AgentState.IDLE && id && id !== before ? true : undefined;
        },
        "the agent replaced once its name is free",
        60_000,
      );
      await engine("rm", "-f", `${squatter}-dead`).catch(() => undefined); // removed already
    });

    it("gives no task to an agent whose container is paused, charges no attempt, and uses it again once unpaused", async () => {
      const { client } = conductor;
      const agentId = await eventually(async () => {
        const { agents } = await client.listAgents({});
        return agents.length === 2 && agents.every((a) => a.state === AgentState.IDLE)
          ? agents[0]!.id
          : undefined;
      }, "both agents IDLE");
      const container = await containerOf(agentId);
      await engine("pause", container);
      try {
        const ran = await Promise.all(
          [1, 2, 3].map(async (i) => {
            const { task } = await client.submitTask({
              spec: spec({ maxAttempts: 1, prompt: scripted([{ text: `while paused ${i}` }]) }),
            });
            return waitForEnd(client, task!.id);
          }),
        );
        for (const t of ran) {
          expect(t.state, t.result?.error).toBe(TaskState.SUCCEEDED);
          expect(t.agentId).not.toBe(agentId);
        }
        const listed = (await client.listAgents({})).agents.find((a) => a.id === agentId);
        expect(listed?.state).toBe(AgentState.FAILED);
        // Left as it is: paused, not replaced.
        expect(await stateOf(container)).toBe("paused");
      } finally {
        await engine("unpause", container).catch(() => undefined);
      }
      await eventually(async () => {
        const a = (await client.listAgents({})).agents.find((x) => x.id === agentId);
        return a?.state === AgentState.IDLE ? true : undefined;
      }, "the agent IDLE again once unpaused");
      // Two at once: each agent takes one, the unpaused one too.
      const both = await Promise.all(
        [1, 2].map(async (i) => {
          const { task } = await client.submitTask({
            spec: spec({
              maxAttempts: 1,
              prompt: scripted([{ text: `unpaused ${i}`, delay_ms: 3000 }]),
            }),
          });
          return waitForEnd(client, task!.id);
        }),
      );
      for (const t of both) expect(t.state, t.result?.error).toBe(TaskState.SUCCEEDED);
      expect(both.map((t) => t.agentId)).toContain(agentId);
      expect(await containerOf(agentId)).toBe(container);
      expect(await stateOf(container)).toBe("running");
    });

    it("ends a check its paused container cannot end at the check's timeout, saying so, and replaces the container", async () => {
      const { client, dir } = conductor;
      const repo = path.join(dir, "src", `paused-check-${runtime}`);
      makeRepository(repo);
      const { task } = await client.submitTask({
        spec: spec({
          maxAttempts: 1,
          prompt: scripted([{ text: "ok" }]),
          workspace: { kind: { case: "git", value: { repository: repo } } },
          checks: [{ command: "sleep 30.7319", timeoutSeconds: 4 }],
        }),
      });
      await waitForState(client, task!.id, TaskState.RUNNING);
      const agentId = (await client.getTask({ id: task!.id })).task!.agentId;
      const container = await containerOf(agentId);
      // Paused once the check runs.
      await eventually(
        async () => (processesMatching(/^sleep 30\.7319$/).length > 0 ? true : undefined),
        "the check's sleep",
      );
      await engine("pause", container);
      const done = await waitForEnd(client, task!.id);
      expect(done.state).toBe(TaskState.FAILED);
      expect(done.result?.error).toMatch(
        /container died during the run: Conductor killed it, as no process could start in it .*paused/,
      );
      expect(done.result!.checks[0]!.outputTail).toMatch(/paused, or its pids limit full/);
      await eventually(async () => {
        const id = await containerOf(agentId);
        const a = (await client.listAgents({})).agents.find((x) => x.id === agentId);
        return id && id !== container && a?.state === AgentState.IDLE ? true : undefined;
      }, "the agent replaced");
    });

    it("reports an OOM kill of an agent's container as out of memory, and replaces the agent", async () => {
      const { client } = conductor;
      // The containers' PID 1 (nobody's: the agent can't touch it) is made the OOM killer's
      // victim from the host, as the kernel picks the highest score; then a hog fills the
      // 512 MiB limit.
      const hog = "head -c 600m /dev/zero | tail";
      const { agents } = await client.listAgents({});
      const before = new Map(
        await Promise.all(agents.map(async (a) => [a.id, await containerOf(a.id)] as const)),
      );
      for (const id of before.values()) {
        const pid = (await engine("inspect", "-f", "{{.State.Pid}}", id)).stdout.trim();
        writeFileSync(`/proc/${pid}/oom_score_adj`, "1000");
      }
      const { task } = await client.submitTask({
        spec: spec({
          allowedTools: ["Bash"],
          prompt: scripted([{ bash: hog }, { text: "never" }]),
        }),
      });
      const ended = await waitForEnd(client, task!.id);
      expect(ended.state).toBe(TaskState.FAILED);
      expect(ended.result?.error).toMatch(/container died during the run: out of memory/);
      // A new container serves the agent; the dead one is gone.
      const died = before.get(ended.agentId);
      expect(died).toBeTruthy();
      const replaced = await eventually(async () => {
        const id = await containerOf(ended.agentId);
        return id && id !== died ? id : undefined;
      }, "the replacement container");
      expect(replaced).not.toBe(died);
    });
  },
);

/** Two Conductors (two data folders) on one engine, with the same node name: no collision. */
describe.runIf(containerRuntimes.length > 0).each(containerRuntimes)(
  "two Conductors on one %s engine",
  (runtime) => {
    const node = `twin-${randomUUID().slice(0, 8)}`;
    const engine = (...args: string[]) => run(runtime, args);
    const containers = async () =>
      (
        await engine("ps", "-q", "--no-trunc", "--filter", `label=dev.conductor.node=${node}`)
      ).stdout
        .split("\n")
        .filter(Boolean)
        .sort();

    afterAll(async () => {
      const left = (await engine("ps", "-aq", "--filter", `label=dev.conductor.node=${node}`))
        .stdout;
      expect(left.trim()).toBe("");
    });

    it("run side by side, and each removes only its own containers", async () => {
      await using model = await startFakeModel();
      const options = { agents: 1, runtime, modelUrl: model.url };
      const env = { CONDUCTOR_ORCHESTRATOR_NODE_ID: node };
      await using first = await startConductor({ ...options, env });
      const own = await containers();
      expect(own).toHaveLength(1);
      {
        await using second = await startConductor({ ...options, env });
        expect(await containers()).toHaveLength(2);
        for (const { client } of [first, second]) {
          const { task } = await client.submitTask({
            spec: spec({ prompt: scripted([{ text: "side by side" }]) }),
          });
          const ended = await waitForEnd(client, task!.id);
          expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
        }
      }
      // The second one is gone with its container; the first one's runs on, and works.
      expect(await containers()).toEqual(own);
      const { task } = await first.client.submitTask({
        spec: spec({ prompt: scripted([{ text: "still mine" }]) }),
      });
      const ended = await waitForEnd(first.client, task!.id);
      expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
    }, 180_000); // two whole Conductors: Podman's API takes seconds a call on a busy machine
  },
);
