// A container run that kills its exec wrapper and fills the container's pids limit, so that
// no exec can start in it to end what it left (docker, podman; a process sandbox ends with its
// run): the container goes instead (unless the killer wins a slot the run freed), nothing of
// the run lives on, and the agent's next task runs.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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
  type Conductor,
} from "../harness.ts";

describe.each(testRuntimes().filter((r) => r !== "process"))(
  "a full pids limit on %s",
  (runtime) => {
    let model: FakeModel;
    let conductor: Conductor;
    beforeAll(async () => {
      model = await startFakeModel();
      conductor = await startConductor({
        agents: 1,
        runtime,
        modelUrl: model.url,
        env: {
          CONDUCTOR_ORCHESTRATOR_NODE_ID: `pids-${randomUUID().slice(0, 8)}`,
          CONDUCTOR_AGENT_RESULT_GRACE_SECONDS: "2",
          CONDUCTOR_AGENT_CONTAINER_PIDS: "100",
        },
      });
    });
    afterAll(async () => {
      await conductor?.close();
      await model?.close();
    });

    it("leaves nothing of a run that killed its wrapper and took every pid", async () => {
      // Takes every process slot it can (sleep 43217), kills the run's wrapper and lifeline
      // holder once the limit is reached, and goes on taking every slot that frees up.
      const filler = String.raw`const { spawn } = require("child_process"), fs = require("fs");
const cmd = (p) => { try { return fs.readFileSync("/proc/" + p + "/cmdline", "utf8").split("\0").join(" "); } catch { return ""; } };
const pids = () => fs.readdirSync("/proc").filter((e) => /^\d+$/.test(e));
let full = false, n = 0;
function onFull() {
  if (full) return;
  full = true;
  for (const p of pids()) {
    const c = cmd(p);
    if (c.includes("conductor-ex" + "ec") || c.startsWith("soc" + "at -u ")) try { process.kill(+p, "SIGKILL"); } catch {}
  }
  fs.writeFileSync("full.txt", String(n));
}
function grab() {
  try {
    const c = spawn("sleep", ["43217"], { detached: true, stdio: "ignore" });
    c.on("error", onFull);
    c.on("spawn", () => n++);
    c.unref();
  } catch { onFull(); }
  setTimeout(grab, full ? 1 : 0);
}
grab();
setTimeout(() => process.exit(0), 60000);
`;
      const { task } = await conductor.client.submitTask({
        spec: spec({
          allowedTools: ["Bash", "Write"],
          timeoutSeconds: 60,
          prompt: scripted([
            { write: { path: "filler.js", content: filler } },
            { bash: "setsid node filler.js </dev/null >/dev/null 2>&1 & sleep 5; cat full.txt" },
            { text: "{{last_tool_result}}" },
          ]),
        }),
      });
      const ended = await waitForEnd(conductor.client, task!.id);
      expect(ended.state).toBe(TaskState.FAILED);
      // Either no process could start in the container to end what the run left, and the
      // container was killed; or the killer took a slot the run freed and ended it all in there.
      expect(ended.result?.error).toMatch(
        /container died during the run: Conductor killed it|CLI exited with code 137 without a result/,
      );
      await eventually(
        async () => (processesMatching(/^sleep 43217/).length === 0 ? true : undefined),
        "no process of the run left",
        10_000,
      );
      const next = await conductor.client.submitTask({
        spec: spec({ prompt: scripted([{ text: "hi" }]) }),
      });
      const after = await waitForEnd(conductor.client, next.task!.id);
      expect(after.state, after.result?.error).toBe(TaskState.SUCCEEDED);
    }, 120_000);
  },
);
