import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "./config.ts";

describe("loadConfig", () => {
  it("applies defaults, then file, then environment, then flags", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-config-"));
    const file = path.join(dir, "conductor.yaml");
    writeFileSync(file, "orchestrator:\n  num_agents: 4\nagent:\n  model: sonnet\n");
    const config = loadConfig({
      file,
      cwd: dir,
      env: { CONDUCTOR_AGENT_MODEL: "opus", CONDUCTOR_AGENT_ALLOWED_TOOLS: "Write,Bash" },
      flags: { "orchestrator.num_agents": 7 },
    });
    expect(config.orchestrator.num_agents).toBe(7);
    expect(config.agent.model).toBe("opus");
    expect(config.agent.allowed_tools).toEqual(["Write", "Bash"]);
    expect(config.communication.socket_path).toBe(
      path.join(dir, ".conductor/run/orchestrator.sock"),
    );
    expect(config.orchestrator.default_timeout_seconds).toBe(600);
  });

  it("names the bad key", () => {
    expect(() => loadConfig({ env: { CONDUCTOR_ORCHESTRATOR_NUM_AGENTS: "zero" } })).toThrow(
      /"orchestrator.num_agents"/,
    );
    expect(() => loadConfig({ flags: { "agent.permission_mode": "yolo" } })).toThrow(
      /"agent.permission_mode"/,
    );
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-config-"));
    const file = path.join(dir, "c.yaml");
    writeFileSync(file, "agent:\n  colour: blue\n");
    expect(() => loadConfig({ file })).toThrow(ConfigError);
    expect(() => loadConfig({ file })).toThrow(/colour/);
  });

  it("takes the API key and base URL from the standard Anthropic variables", () => {
    const config = loadConfig({
      env: { ANTHROPIC_API_KEY: "sk-test", ANTHROPIC_BASE_URL: "http://127.0.0.1:9" },
    });
    expect(config.agent.anthropic_api_key).toBe("sk-test");
    expect(config.agent.anthropic_base_url).toBe("http://127.0.0.1:9");
  });

  it("waits 600 s for a lost agent host unless told otherwise", () => {
    const key = "CONDUCTOR_ORCHESTRATOR_UNCONFIRMED_ATTEMPT_TIMEOUT_SECONDS";
    const timeout = (env: Record<string, string>) =>
      loadConfig({ env }).orchestrator.unconfirmed_attempt_timeout_seconds;
    expect(timeout({})).toBe(600);
    expect(timeout({ [key]: "30" })).toBe(30);
    expect(() => timeout({ [key]: "0" })).toThrow(
      /"orchestrator.unconfirmed_attempt_timeout_seconds"/,
    );
  });
});
