import { readdirSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import { scripted, spec, startConductor, waitForEnd, type Conductor } from "../harness.ts";

/** agent.workspace_policy: "clean" gives every task an empty workspace. */
describe("the clean workspace policy", () => {
  let model: FakeModel;
  let conductor: Conductor;

  beforeAll(async () => {
    model = await startFakeModel();
    conductor = await startConductor({
      agents: 1,
      modelUrl: model.url,
      env: { CONDUCTOR_AGENT_WORKSPACE_POLICY: "clean" },
    });
  });
  afterAll(async () => {
    await conductor?.close();
    await model?.close();
  });

  it("empties the workspace before each task", async () => {
    const { client } = conductor;
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
