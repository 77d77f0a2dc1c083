/**
 * A tool call the task's permissions deny is visible: in the result, in `conductor watch`
 * and in `conductor get`; the task still SUCCEEDED (its CLI finished).
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { ROOT, scripted, spec, waitForEnd } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

const run = promisify(execFile);
const CLI = path.join(ROOT, "bin", "conductor.js");

describe("a denied tool call", () => {
  const setup = useConductor(() => ({ agents: 1 }));

  it("is listed in the result, marked by watch and shown by get; the task still succeeds", async () => {
    const { client, socketDir, dataDir } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([
          { bash: "echo hi > denied.txt" },
          { write: { path: "allowed.txt", content: "ok" } },
          { text: "finished what I was allowed to" },
        ]),
        permissionMode: "default",
        allowedTools: ["Write"],
      }),
    });
    const id = task!.id;
    const ended = await waitForEnd(client, id);

    expect(ended.state, ended.result?.error).toBe(TaskState.SUCCEEDED);
    const denied = ended.result!.deniedToolCalls;
    expect(denied.map((d) => d.name)).toEqual(["Bash"]);
    expect(JSON.parse(denied[0]!.inputJson)).toMatchObject({ command: "echo hi > denied.txt" });
    expect(denied[0]!.denial).toMatch(/denied\.txt/);
    const workspace = path.join(dataDir, "agents", "agent-1", "workspace");
    expect(existsSync(path.join(workspace, "denied.txt"))).toBe(false);
    expect(existsSync(path.join(workspace, "allowed.txt"))).toBe(true);

    const args = ["--socket-dir", socketDir];
    const watched = await run(process.execPath, [CLI, "watch", id, ...args]);
    const lines = watched.stdout.split("\n");
    expect(lines.some((l) => l.includes('→ Write {"file_path"'))).toBe(true);
    expect(lines.find((l) => l.includes("✗ denied Bash"))).toMatch(
      /✗ denied Bash \{"command":"echo hi > denied\.txt".*: .*denied\.txt/,
    );
    expect(watched.stdout).toMatch(/1 tool call\(s\) denied: Bash/);

    const shown = await run(process.execPath, [CLI, "get", id, ...args]);
    expect(shown.stdout).toMatch(
      /^denied +Bash \{"command":"echo hi > denied\.txt".*: .*denied\.txt/m,
    );
    const got = await run(process.execPath, [CLI, "get", id, "--json", ...args]);
    const json = JSON.parse(got.stdout) as {
      state: string;
      result: { deniedToolCalls: { name: string; inputJson: string; denial: string }[] };
    };
    expect(json.state).toBe("TASK_STATE_SUCCEEDED");
    expect(json.result.deniedToolCalls).toEqual([
      {
        id: denied[0]!.id,
        name: "Bash",
        inputJson: denied[0]!.inputJson,
        denial: denied[0]!.denial,
      },
    ]);
  });
});
