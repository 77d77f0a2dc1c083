import { readdirSync } from "node:fs";
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
});
