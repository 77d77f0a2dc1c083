// Whether a run is offered the Broker's tools, decided against a real Broker on a Unix socket.
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { localBroker } from "../broker/access.ts";
import { startTestBroker } from "../broker/testing.ts";
import { brokerTools } from "./broker-tools.ts";

describe("brokerToolsForRun", () => {
  it("offers the tools while the Broker answers, registering the agent, and says why not once it is gone", async () => {
    await using broker = await startTestBroker();
    const agent = await broker.agentWay("agent-7");
    const check = brokerTools(localBroker(broker.secret, broker.socketPath));

    const offered = await check(agent, "agent-7");
    expect(offered).toEqual({
      offered: true,
      settings: { alwaysAllowedTools: ["mcp__conductor"], extraArgs: agent.cliArgs },
    });
    const { agents } = await broker.agent("agent-7").listAgents({});
    expect(agents.map((a) => a.id)).toContain("agent-7");

    const otherKey = brokerTools(localBroker(randomBytes(32), broker.socketPath));
    const wrongKey = await otherKey(agent, "agent-7");
    expect(wrongKey.offered).toBe(false);
    expect(!wrongKey.offered && wrongKey.notice).toMatch(
      /refuses this AgentHost's key .* must share storage\.data_dir/,
    );

    await broker.server.close();
    const gone = await check(agent, "agent-7");
    expect(gone.offered).toBe(false);
    expect(!gone.offered && gone.notice).toMatch(
      new RegExp(`^No Broker answers at ${broker.socketPath} \\(.+\\): .*\`conductor broker\``),
    );
    // The same check finds the Broker again once it is back.
    await broker.restart();
    expect((await check(agent, "agent-7")).offered).toBe(true);
  });
});
