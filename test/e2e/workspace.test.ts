import { readdirSync, renameSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { scripted, spec, waitForEnd } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

/** agent.workspace_policy: "clean" gives every task an empty workspace. */
describe("the clean workspace policy", () => {
  const setup = useConductor(() => ({
    agents: 1,
    env: { CONDUCTOR_AGENT_WORKSPACE_POLICY: "clean" },
  }));

  it("empties the workspace before each task", async () => {
    const { client } = setup.conductor;
    for (const name of ["first.txt", "second.txt"]) {
      const { task } = await client.submitTask({
        spec: spec({
          prompt: scripted([{ write: { path: name, content: name } }, { text: "ok" }]),
        }),
      });
      expect((await waitForEnd(client, task!.id)).state).toBe(TaskState.SUCCEEDED);
    }
    const { agents } = await client.listAgents({});
    const workspace = agents[0]!.workspace;
    expect(readdirSync(workspace).filter((f) => !f.startsWith("."))).toEqual(["second.txt"]);
    expect(path.basename(workspace)).toBe("workspace");
  });

  it("fails a task whose agent's workspace is gone saying so, and the agent takes the next", async () => {
    const { client } = setup.conductor;
    const workspace = (await client.listAgents({})).agents[0]!.workspace;
    const aside = `${workspace}.aside`;
    renameSync(workspace, aside);
    const ok = spec({ prompt: scripted([{ text: "ok" }]) });
    let id: string;
    try {
      id = (await client.submitTask({ spec: { ...ok, maxAttempts: 1 } })).task!.id;
      const failed = await waitForEnd(client, id);
      expect(failed.state).toBe(TaskState.FAILED);
      expect(failed.result?.error).toMatch(/workspace could not be opened: .*no such file/);
    } finally {
      renameSync(aside, workspace);
    }
    id = (await client.submitTask({ spec: ok })).task!.id;
    expect((await waitForEnd(client, id)).state).toBe(TaskState.SUCCEEDED);
  });
});
