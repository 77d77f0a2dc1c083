// Budgets enforced mid-run by the AgentHost's model proxy, on the process runtime and docker.
import { describe, expect, it } from "vitest";
import { ErrorKind, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { scripted, spec, testRuntimes, waitForEnd } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

/** What each scripted turn reports: priced at Sonnet's $3/$15 per million, $0.045 a turn. */
const COSTLY = { input_tokens: 10_000, output_tokens: 1_000 };

const runtimes = testRuntimes().filter((r) => r === "process" || r === "docker");

describe.each(runtimes)("a task's budget on the %s runtime", (runtime) => {
  const setup = useConductor(() => ({
    agents: 1,
    runtime,
    env: { CONDUCTOR_AGENT_MAX_API_RETRIES: "0" },
  }));

  it("is enforced by the model proxy mid-run: FAILED with error_kind BUDGET, not retried", async () => {
    const { client } = setup.conductor;
    const marker = `budget-${runtime}-${Date.now()}`;
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted(
          [
            { bash: "echo one", usage: COSTLY },
            { bash: "echo two", usage: COSTLY },
            { text: "never reached", usage: COSTLY },
          ],
          `Spend, ${marker}.`,
        ),
        allowedTools: ["Bash"],
        model: "claude-sonnet-4-5",
        maxAttempts: 3,
        budget: { maxUsd: 0.01 },
      }),
    });
    const ended = await waitForEnd(setup.conductor.client, task!.id);
    expect(TaskState[ended.state]).toBe("FAILED");
    expect(ErrorKind[ended.result!.errorKind]).toBe("BUDGET");
    expect(ended.result!.error).toMatch(/^budget exhausted: \$0\.0450 of \$0\.0100/);
    expect(ended.attempts).toBe(1);
    // The CLI's second call was refused before it reached the API: one call of three.
    const calls = setup.model.requests.filter(
      (r) => r.kind === "main" && JSON.stringify(r.body).includes(marker),
    );
    expect(calls).toHaveLength(1);
    // What is recorded is what the proxy metered.
    expect(ended.result!.usage!.inputTokens).toBe(10_000n);
    expect(ended.result!.usage!.outputTokens).toBe(1_000n);
    expect(ended.result!.costUsd).toBeCloseTo(0.045, 9);
  });

  it("lets a task within its budget finish, recording what it spent", async () => {
    const { client } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([{ text: "cheap", usage: { input_tokens: 100, output_tokens: 10 } }]),
        model: "claude-sonnet-4-5",
        budget: { maxUsd: 1, maxOutputTokens: 1000n },
      }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(TaskState[ended.state]).toBe("SUCCEEDED");
    expect(ended.result!.costUsd).toBeCloseTo((100 * 3 + 10 * 15) / 1e6, 12);
  });

  it("records usage past what its fields hold as the most they hold, and the AgentHost is not taken as lost", async () => {
    const { client } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([{ text: "hi", usage: { input_tokens: 1e300, output_tokens: 1 } }]),
        maxAttempts: 1,
      }),
    });
    const ended = await waitForEnd(client, task!.id);
    expect(ended.result?.error ?? "").not.toMatch(/lost the agent host/);
    expect(ended.result!.usage!.inputTokens).toBe(BigInt(Number.MAX_SAFE_INTEGER));
  });
});
