// Task groups: max_parallel, the aggregate, the reduce step, fail_fast, a matrix, member
// dependencies and their refusals, CancelTaskGroup, idempotency and a group budget, with the
// real CLI against the fake model.
import { Code } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { TaskGroupSpecSchema, type TaskGroup } from "../../gen/conductor/v1/group_pb.js";
import { ErrorKind, TaskState, type Task } from "../../gen/conductor/v1/task_pb.js";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { ms, scripted, spec, testRuntimes, waitForState } from "../harness.ts";
import { conductor } from "../repositories.ts";
import { useConductor } from "./use-conductor.ts";

/** The most of `tasks` that ran at once, from their start and end times. */
function peak(tasks: Task[]): number {
  const edges = tasks.flatMap((t) => [
    { at: ms(t.startTime), d: 1 },
    { at: ms(t.endTime), d: -1 },
  ]);
  edges.sort((a, b) => a.at - b.at || a.d - b.d);
  let now = 0;
  let most = 0;
  for (const e of edges) most = Math.max(most, (now += e.d));
  return most;
}

type GroupInit = Parameters<typeof create<typeof TaskGroupSpecSchema>>[1];

describe("task groups", () => {
  const setup = useConductor(() => ({
    agents: 6,
    runtime: testRuntimes()[0]!,
    env: { CONDUCTOR_AGENT_MAX_API_RETRIES: "0" },
  }));

  const submitGroup = async (init: GroupInit) => {
    const res = await setup.conductor.client.submitTaskGroup({
      spec: create(TaskGroupSpecSchema, init),
    });
    return res.group!;
  };

  /** Watches the group to its end; returns every message and the most running at once. */
  const watchToEnd = async (id: string) => {
    const running = new Set<string>();
    let most = 0;
    let last: TaskGroup | undefined;
    const changes: string[] = [];
    const signal = AbortSignal.timeout(120_000);
    for await (const msg of setup.conductor.client.watchTaskGroup({ id }, { signal })) {
      if (msg.group) last = msg.group;
      const c = msg.change;
      if (!c?.change) continue;
      changes.push(`${c.member}:${TaskState[c.change.state]}`);
      if (c.member === "reduce") continue;
      if (c.change.state === TaskState.SCHEDULED || c.change.state === TaskState.RUNNING)
        running.add(c.taskId);
      else running.delete(c.taskId);
      most = Math.max(most, running.size);
    }
    return { group: last!, most, changes };
  };

  it(
    "runs 12 members at most 3 at a time, then a reduce step given every result",
    { timeout: 180_000 },
    async () => {
      const members = Array.from({ length: 12 }, (_, i) => ({
        name: `m${i}`,
        spec: spec({
          prompt: scripted([
            { write: { path: "w.txt", content: "x" }, delay_ms: 300 },
            { text: `result-of-m${i}` },
          ]),
        }),
      }));
      const group = await submitGroup({
        name: "twelve",
        members,
        maxParallel: 3,
        reduce: spec({ prompt: scripted([{ text: "merged verdict" }], "Merge: {{members}}") }),
      });
      expect(TaskState[group.state]).toBe("QUEUED");
      expect(group.members.map((m) => m.name)).toEqual(members.map((m) => m.name));
      const { group: ended, most } = await watchToEnd(group.id);
      expect(most).toBe(3);
      expect(TaskState[ended.state]).toBe("SUCCEEDED");
      expect(ended.aggregate!.tasksByState).toEqual({ TASK_STATE_SUCCEEDED: 13n });
      expect(ended.aggregate!.taskCount).toBe(13);
      expect(ended.aggregate!.usage!.inputTokens).toBeGreaterThan(0n);
      expect(ended.result!.text).toBe("merged verdict");
      expect(ended.members.every((m) => TaskState[m.state] === "SUCCEEDED")).toBe(true);
      // From the tasks' own times: never more than 3 at once.
      const { client } = setup.conductor;
      const tasks = await Promise.all(
        ended.members.map(async (m) => (await client.getTask({ id: m.taskId })).task!),
      );
      expect(peak(tasks)).toBe(3);
      // The reduce step started after the last member ended, and its prompt held every result.
      const reduce = (await client.getTask({ id: ended.reduceTaskId })).task!;
      expect(reduce.member).toBe("reduce");
      expect(reduce.groupId).toBe(group.id);
      expect(ms(reduce.startTime)).toBeGreaterThanOrEqual(
        Math.max(...tasks.map((t) => ms(t.endTime))),
      );
      const seen = setup.model.requests.find((r) => JSON.stringify(r.body).includes("Merge: "));
      const prompt = JSON.stringify(seen!.body);
      for (let i = 0; i < 12; i++) {
        expect(prompt).toContain(`result-of-m${i}`);
        expect(prompt).toContain(`Member m${i}: SUCCEEDED`);
      }
    },
  );

  it("fail_fast cancels the running and queued members and the reduce step", async () => {
    const slow = (i: number) => ({
      name: `slow${i}`,
      spec: spec({ prompt: scripted([{ text: `slow ${i}`, delay_ms: 60_000 }]) }),
    });
    const group = await submitGroup({
      members: [
        slow(1),
        {
          name: "bad",
          spec: spec({
            prompt: scripted([
              { error: { status: 400, type: "invalid_request_error", message: "refused" } },
            ]),
            maxAttempts: 3,
          }),
        },
        slow(2),
        slow(3),
      ],
      maxParallel: 3,
      failFast: true,
      reduce: spec({ prompt: scripted([{ text: "never" }]) }),
    });
    const { group: ended } = await watchToEnd(group.id);
    expect(TaskState[ended.state]).toBe("FAILED");
    expect(ended.reason).toMatch(/^fail_fast: member bad ended FAILED/);
    const states = Object.fromEntries(ended.members.map((m) => [m.name, TaskState[m.state]]));
    expect(states).toEqual({
      slow1: "CANCELLED",
      bad: "FAILED",
      slow2: "CANCELLED",
      slow3: "CANCELLED",
    });
    // slow3 never started: max_parallel held it until the cut.
    expect(ended.members.find((m) => m.name === "slow3")!.attempts).toBe(0);
    const reduce = (await setup.conductor.client.getTask({ id: ended.reduceTaskId })).task!;
    expect(TaskState[reduce.state]).toBe("CANCELLED");
    expect(ErrorKind[reduce.result!.errorKind]).toBe("CANCELLED");
    expect(ms(ended.endTime)).toBeGreaterThan(0);
  });

  it("makes one member per matrix value, each with its own prompt", async () => {
    const repos = ["alpha", "beta", "gamma", "delta", "epsilon"];
    const group = await submitGroup({
      template: spec({
        prompt: scripted([{ text: "reviewed {{repository}}" }], "Review {{repository}}"),
        labels: { repo: "{{repository}}" },
      }),
      matrix: [{ name: "repository", values: repos }],
    });
    expect(group.members.map((m) => m.name)).toEqual(repos);
    const { group: ended } = await watchToEnd(group.id);
    expect(TaskState[ended.state]).toBe("SUCCEEDED");
    const { client } = setup.conductor;
    for (const m of ended.members) {
      const t = (await client.getTask({ id: m.taskId })).task!;
      expect(t.spec!.prompt).toMatch(new RegExp(`^Review ${m.name}\\n`));
      expect(t.spec!.labels).toEqual({ repo: m.name });
      expect(t.result!.text).toBe(`reviewed ${m.name}`);
    }
  });

  it("orders members by depends_on names, carrying results; refuses cycles and unknown ids", async () => {
    const group = await submitGroup({
      members: [
        {
          name: "second",
          spec: spec({
            prompt: scripted([{ text: "then {{deps.first.result}}" }]),
            dependsOn: ["first"],
          }),
        },
        { name: "first", spec: spec({ prompt: scripted([{ text: "one" }]) }) },
      ],
    });
    const { group: ended } = await watchToEnd(group.id);
    const second = ended.members.find((m) => m.name === "second")!;
    const t = (await setup.conductor.client.getTask({ id: second.taskId })).task!;
    expect(t.result!.text).toBe("then one");

    const member = (name: string, dependsOn: string[]) => ({
      name,
      spec: spec({ prompt: "x", dependsOn }),
    });
    await expect(
      submitGroup({ members: [member("a", ["c"]), member("b", ["a"]), member("c", ["b"])] }),
    ).rejects.toMatchObject({ code: Code.InvalidArgument, rawMessage: /cycle: a → c → b → a/ });
    await expect(submitGroup({ members: [member("a", ["no-such-task"])] })).rejects.toMatchObject({
      code: Code.NotFound,
      rawMessage: /no-such-task/,
    });
    await expect(
      submitGroup({ members: [member("a", []), { name: "b", spec: spec({ prompt: "" }) }] }),
    ).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: /^member b \(spec\.members\[1\]\): /,
    });
    await expect(
      submitGroup({ members: [member("a", []), member("a", [])] }),
    ).rejects.toMatchObject({ code: Code.InvalidArgument, rawMessage: /"a" is given twice/ });
    await expect(submitGroup({ members: [] })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
  });

  it("cancels a group, keeps one group per idempotency key, and lists groups", async () => {
    const { client } = setup.conductor;
    const key = `campaign-${Date.now()}`;
    const earlier = await submitGroup({
      members: [{ name: "quick", spec: spec({ prompt: scripted([{ text: "quick" }]) }) }],
    });
    const init: GroupInit = {
      name: "to cancel",
      idempotencyKey: key,
      members: [1, 2, 3].map((i) => ({
        name: `t${i}`,
        spec: spec({ prompt: scripted([{ text: "late", delay_ms: 60_000 }]) }),
      })),
      maxParallel: 2,
    };
    const group = await submitGroup(init);
    const again = await client.submitTaskGroup({ spec: create(TaskGroupSpecSchema, init) });
    expect(again.deduplicated).toBe(true);
    expect(again.group!.id).toBe(group.id);
    await waitForState(client, group.members[1]!.taskId, TaskState.RUNNING);
    const held = (await client.getTask({ id: group.members[2]!.taskId })).task!;
    expect(held.queueReason).toBe(
      "the group runs its max_parallel of 2 members; starts when one ends",
    );
    const cancelled = (await client.cancelTaskGroup({ id: group.id })).group!;
    expect(TaskState[cancelled.state]).toBe("CANCELLED");
    expect(cancelled.members.map((m) => TaskState[m.state])).toEqual([
      "CANCELLED",
      "CANCELLED",
      "CANCELLED",
    ]);
    await expect(client.cancelTaskGroup({ id: group.id })).rejects.toMatchObject({
      code: Code.FailedPrecondition,
    });
    await expect(client.getTaskGroup({ id: "nope" })).rejects.toMatchObject({
      code: Code.NotFound,
    });
    const listed = await client.listTaskGroups({ pageSize: 1 });
    expect(listed.groups.map((g) => g.id)).toEqual([group.id]);
    expect(listed.groups[0]!.members).toEqual([]);
    const next = await client.listTaskGroups({ pageSize: 1, pageToken: listed.nextPageToken });
    expect(next.groups.map((g) => g.id)).toEqual([earlier.id]);
    expect(next.groups[0]!.spec!.members).toEqual([]);
  });

  it("stops a group at its budget: the member running out FAILED, the rest CANCELLED, BUDGET", async () => {
    // Each turn is priced at Sonnet's $3/$15 per million: $0.0045; a member takes 3 turns.
    const turn = { usage: { input_tokens: 1_000, output_tokens: 100 } };
    const group = await submitGroup({
      members: [1, 2, 3].map((i) => ({
        name: `c${i}`,
        spec: spec({
          prompt: scripted([
            { bash: "echo one", ...turn },
            { bash: "echo two", ...turn },
            { text: `spent ${i}`, ...turn },
          ]),
          model: "claude-sonnet-4-5",
        }),
      })),
      maxParallel: 1,
      budget: { maxUsd: 0.02 },
    });
    const { group: ended } = await watchToEnd(group.id);
    expect(TaskState[ended.state]).toBe("FAILED");
    expect(ended.members.map((m) => TaskState[m.state])).toEqual([
      "SUCCEEDED",
      "FAILED",
      "CANCELLED",
    ]);
    // c2 started with $0.0065 left: the proxy refused its third request.
    expect(ErrorKind[ended.members[1]!.errorKind]).toBe("BUDGET");
    expect(ErrorKind[ended.members[2]!.errorKind]).toBe("BUDGET");
    expect(ended.reason).toBe("group budget exhausted: $0.0225 of $0.0200");
    expect(ended.aggregate!.costUsd).toBeCloseTo(0.0225, 6);
  });

  it(
    "is driven from the CLI: group submit -f, watch, get, list, and submit --group",
    { timeout: 180_000 },
    async () => {
      const { dir, socketDir } = setup.conductor;
      const where = ["--socket-dir", socketDir];
      const file = path.join(dir, "group.yaml");
      writeFileSync(
        file,
        [
          "name: cli-campaign",
          "max_parallel: 2",
          "members:",
          `  - name: first`,
          `    prompt: ${JSON.stringify(scripted([{ text: "one" }]))}`,
          `  - name: second`,
          `    depends_on: [first]`,
          `    prompt: ${JSON.stringify(scripted([{ text: "two after {{deps.first.result}}" }]))}`,
          `reduce: { prompt: ${JSON.stringify(scripted([{ text: "all done" }], "Sum up {{members}}"))} }`,
        ].join("\n"),
      );
      const submitted = await conductor(["group", "submit", "-f", file, "--wait", ...where], dir);
      expect(submitted.stderr).toBe("");
      expect(submitted.code).toBe(0);
      const id = submitted.stdout.split("\n")[0]!;
      expect(submitted.stdout).toMatch(/^second running +\[1 queued · 1 running · 1 succeeded\]$/m);
      expect(submitted.stdout).toMatch(/^state +SUCCEEDED$/m);
      expect(submitted.stdout).toMatch(/^result:\nall done$/m);
      const got = await conductor(["group", "get", id, ...where], dir);
      expect(got.stdout).toMatch(/^tasks +3 succeeded$/m);
      expect(got.stdout).toMatch(/^second +\S+ +succeeded +1 /m);
      const asJson = JSON.parse(
        (await conductor(["group", "get", id, "--json", ...where], dir)).stdout,
      ) as { spec: { name: string }; members: { taskId: string }[] };
      expect(asJson.spec.name).toBe("cli-campaign");
      expect((await conductor(["group", "list", ...where], dir)).stdout).toContain(id);
      const member = asJson.members[1]!.taskId;
      const task = await conductor(["get", member, ...where], dir);
      expect(task.stdout).toMatch(new RegExp(`^group +${id} \\(member second\\)$`, "m"));

      const sugar = await conductor(
        [
          "submit",
          "--group",
          "sugar",
          "--each",
          "n=1,2,3",
          "--max-parallel",
          "1",
          ...where,
          scripted([{ text: "n is {{n}}" }]),
        ],
        dir,
      );
      expect(sugar.code).toBe(0);
      const watched = await conductor(["group", "watch", sugar.stdout.trim(), ...where], dir);
      expect(watched.code).toBe(0);
      expect(watched.stdout).toMatch(/^group \S+ succeeded/m);
      expect(watched.stdout).toMatch(/^3 +\S+ +succeeded/m);
      const lone = await conductor(["submit", "--each", "p=a,b", ...where, "x {{p}}"], dir);
      expect(lone.code).toBe(2);
      expect(lone.stderr).toMatch(/--each makes a task group: give --group NAME as well/);
      const bad = await conductor(
        ["group", "submit", "-f", path.join(dir, "nope.yaml"), ...where],
        dir,
      );
      expect(bad.code).not.toBe(0);
      expect(bad.stderr).toMatch(/cannot read the spec file/);
    },
  );

  it(
    "goes on across a SIGKILL of the Orchestrator, holding max_parallel",
    { timeout: 180_000 },
    async () => {
      const { client } = setup.conductor;
      const group = await submitGroup({
        members: [1, 2, 3, 4].map((i) => ({
          name: `r${i}`,
          spec: spec({
            prompt: scripted([
              { write: { path: "w.txt", content: "x" }, delay_ms: 1500 },
              { text: `after restart ${i}` },
            ]),
            maxAttempts: 3,
          }),
        })),
        maxParallel: 2,
        reduce: spec({ prompt: scripted([{ text: "reduced" }]) }),
      });
      await waitForState(client, group.members[0]!.taskId, TaskState.RUNNING);
      await setup.conductor.processes[0]!.kill9();
      await setup.conductor.restart();
      const { group: ended } = await watchToEnd(group.id);
      expect(TaskState[ended.state]).toBe("SUCCEEDED");
      expect(ended.result!.text).toBe("reduced");
      const tasks = await Promise.all(
        ended.members.map(async (m) => (await client.getTask({ id: m.taskId })).task!),
      );
      expect(tasks.map((t) => t.result!.text)).toEqual(
        [1, 2, 3, 4].map((i) => `after restart ${i}`),
      );
      // Started after the restart, the last two never ran beside more than one other.
      const restarted = ms(ended.createTime);
      expect(tasks.every((t) => ms(t.endTime) > restarted)).toBe(true);
    },
  );
});
