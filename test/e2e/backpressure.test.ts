import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AgentState, type Agent } from "../../gen/conductor/v1/agent_pb.js";
import { RUN_BUFFER_BYTES } from "../../services/agent-host/routes.ts";
import { grpcJsAgentHost, type JsRunStep } from "../grpc-js-clients.ts";
import { useConductor } from "./use-conductor.ts";

const LINES = 30_000; // of about 1 KB: 30 MB, over three times RUN_BUFFER_BYTES

/**
 * A RunTask reader that stops reading (an Orchestrator behind a slow disk, a client that
 * stalls) holds the CLI at its next write, not the AgentHost's memory.
 */
describe("back-pressure from a RunTask reader", () => {
  let dir = "";
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const setup = useConductor(() => {
    // A CLI that floods its stdout, then leaves a mark once all of it was taken, then a result.
    dir = mkdtempSync(path.join(tmpdir(), "conductor-flood-"));
    chmodSync(dir, 0o755); // the sandbox's user runs it
    const cli = path.join(dir, "flooding-claude");
    writeFileSync(
      cli,
      `#!/bin/sh
line='{"type":"assistant","message":{"content":[{"type":"text","text":"'$(head -c 1000 /dev/zero | tr '\\0' a)'"}]}}'
yes "$line" | head -n ${LINES}
echo written > flood-written
echo '{"type":"result","subtype":"success","is_error":false,"result":"flooded","session_id":"s","num_turns":1,"duration_ms":1,"total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0}}'
`,
    );
    chmodSync(cli, 0o755);
    return {
      agents: 1,
      env: {
        CONDUCTOR_AGENT_CLAUDE_PATH: cli,
        CONDUCTOR_RUNTIME_READ_ONLY_PATHS: dir,
        CONDUCTOR_AGENT_BROKER_TOOLS: "false",
      },
    };
  });

  it("pauses a flooding CLI while its reader does not read, and loses nothing", async () => {
    expect(LINES * 1000).toBeGreaterThan(3 * RUN_BUFFER_BYTES);
    const { client, socketDir } = setup.conductor;
    let agent: Agent | undefined;
    for (let i = 0; i < 300 && !agent; i++) {
      agent = (await client.listAgents({})).agents.find((a) => a.state === AgentState.IDLE);
      if (!agent) await new Promise((r) => setTimeout(r, 100));
    }
    const written = path.join(agent!.workspace, "flood-written");
    const host = grpcJsAgentHost(path.join(socketDir, "agent-host.sock"));
    try {
      const stream = host.RunTask({
        agentId: agent!.id,
        taskId: `flood-${process.pid}`,
        attempt: 1,
        spec: { prompt: "flood", allowedTools: [] },
      });
      const got: JsRunStep[] = [];
      const ended = new Promise<void>((resolve, reject) => {
        stream.on("end", () => resolve());
        stream.on("error", reject);
      });
      stream.on("data", (r: JsRunStep) => got.push(r));
      stream.pause(); // a reader that stops reading
      // Unheld, the CLI prints all 30 MB in about a second; held, it never gets to the mark.
      // (An observation over bounded time: the point is that nothing happens.)
      for (let i = 0; i < 50 && !existsSync(written); i++) {
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(existsSync(written)).toBe(false);
      stream.resume();
      await ended;
      expect(existsSync(written)).toBe(true);
      expect(got.filter((r) => r.output).length).toBe(LINES + 1);
      expect(got.at(-1)?.outcome?.state).toBe("TASK_STATE_SUCCEEDED");
    } finally {
      host.close();
    }
  });
});
