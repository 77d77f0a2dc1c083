import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { NON_CONFIG_VARIABLES } from "./config-env.ts";
import { ConfigError, configKeys, envName, loadConfig } from "./config.ts";
import { DEFAULT_PRICES } from "./prices.ts";

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

describe("orchestrator.spend_limits", () => {
  const limits = (value: string) =>
    loadConfig({ env: { CONDUCTOR_ORCHESTRATOR_SPEND_LIMITS: value } }).orchestrator.spend_limits;

  it("takes limits with or without labels, an hour's window unless told", () => {
    expect(
      limits("[{usd_per_hour: 20}, {usd_per_hour: 5, labels: {team: a}, window_seconds: 60}]"),
    ).toEqual([
      { usd_per_hour: 20, labels: {}, window_seconds: 3600 },
      { usd_per_hour: 5, labels: { team: "a" }, window_seconds: 60 },
    ]);
  });

  it("names the bad entry: no limit, two limits for the same labels", () => {
    expect(() => limits("[{usd_per_hour: 0}]")).toThrow(
      /"orchestrator\.spend_limits\.0\.usd_per_hour": must be more than 0/,
    );
    expect(() =>
      limits("[{usd_per_hour: 1, labels: {a: b}}, {usd_per_hour: 2, labels: {a: b}}]"),
    ).toThrow(/"orchestrator\.spend_limits\.1\.labels": entry 2 has the labels of entry 1/);
    expect(() => limits("[{usd_per_hour: 1, colour: red}]")).toThrow(/colour/);
  });
});

describe("loadConfig refuses, all at once", () => {
  it("reports every problem, each naming its key and the variable, file or flag it came from", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-config-"));
    try {
      const file = path.join(dir, "c.yaml");
      writeFileSync(file, "agent:\n  colour: blue\norchestator:\n  num_agents: 2\n");
      const e = catchConfigError(() =>
        loadConfig({
          file,
          env: {
            CONDUCTOR_BOGUS_KEY: "1",
            CONDUCTOR_ORCHESTRATOR_NUM_AGENT: "3",
            CONDUCTOR_AGENT_IDLE_TIMEOUT_SECONDS: "3000000",
          },
          flags: { "observability.log_level": "loud" },
          flagNames: { "observability.log_level": "--log-level" },
        }),
      );
      expect(e.problems).toHaveLength(6);
      expect(e.message).toMatch(/the configuration has 6 problems/);
      const line = (re: RegExp) => expect(e.problems.find((p) => re.test(p))).toBeDefined();
      line(/^environment variable CONDUCTOR_BOGUS_KEY is not a configuration key/);
      line(
        /CONDUCTOR_ORCHESTRATOR_NUM_AGENT is not .*did you mean CONDUCTOR_ORCHESTRATOR_NUM_AGENTS\?/,
      );
      line(
        /^CONDUCTOR_AGENT_IDLE_TIMEOUT_SECONDS=3000000: configuration key "agent.idle_timeout_seconds": must be at most 86400 s \(1 day\)/,
      );
      line(new RegExp(`^${file}: configuration key "agent.colour": unknown key`));
      line(/"orchestator": unknown section .*did you mean "orchestrator"\?/);
      line(/^--log-level "loud": configuration key "observability.log_level"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("lets through the CONDUCTOR_* variables that are not configuration keys", () => {
    const env = Object.fromEntries([...NON_CONFIG_VARIABLES].map((n) => [n, "x"]));
    expect(loadConfig({ env }).orchestrator.num_agents).toBe(3);
  });

  it("never quotes the API key in an error", () => {
    const e = catchConfigError(() =>
      loadConfig({
        env: { ANTHROPIC_API_KEY: "sk-secret", CONDUCTOR_AGENT_MODEL: "" },
        flags: { "agent.anthropic_api_key": 7 },
      }),
    );
    expect(e.message).not.toContain("sk-secret");
  });

  it("bounds every duration below what a Node timer can hold", () => {
    const durations = configKeys().filter((k) => /_seconds$|message_timeout$/.test(k));
    expect(durations.length).toBeGreaterThanOrEqual(10);
    for (const key of durations) {
      const e = catchConfigError(() => loadConfig({ env: { [envName(key)]: "3000000" } }));
      expect(e.message).toContain(
        `${envName(key)}=3000000: configuration key "${key}": must be at most`,
      );
      // the largest value accepted still fits a timer (2^31-1 ms)
      const max = Number(/must be at most (\d+) s/.exec(e.message)![1]);
      expect(max * 1000).toBeLessThan(2 ** 31);
      expect(() => loadConfig({ env: { [envName(key)]: String(max) } })).not.toThrow();
    }
  });

  it("refuses a node id that cannot name a container, and a default model or tools no task could name", () => {
    const cases: [Record<string, string>, RegExp][] = [
      [
        { CONDUCTOR_ORCHESTRATOR_NODE_ID: "n".repeat(5000) },
        /CONDUCTOR_ORCHESTRATOR_NODE_ID=n{40}…: configuration key "orchestrator.node_id": must be 1 to 63 letters/,
      ],
      [
        { CONDUCTOR_ORCHESTRATOR_NODE_ID: "a b" },
        /"orchestrator.node_id": must be 1 to 63 letters, digits, "\.", "_" or "-"/,
      ],
      [
        { CONDUCTOR_AGENT_ALLOWED_TOOLS: ",," },
        /CONDUCTOR_AGENT_ALLOWED_TOOLS=,,: configuration key "agent.allowed_tools": entry 1 of 3 is empty/,
      ],
      [
        { CONDUCTOR_AGENT_ALLOWED_TOOLS: "Read,,Bash" },
        /"agent.allowed_tools": entry 2 of 3 is empty/,
      ],
      [
        { CONDUCTOR_AGENT_ALLOWED_TOOLS: "Read,Ba\tsh" },
        /"agent.allowed_tools": allowed_tools\[1\] "Ba\\tsh" contains a control character/,
      ],
      [
        { CONDUCTOR_AGENT_MODEL: "--evil" },
        /CONDUCTOR_AGENT_MODEL=--evil: configuration key "agent.model": model "--evil" is not a model name/,
      ],
    ];
    for (const [env, message] of cases) {
      expect(() => loadConfig({ env }), JSON.stringify(env).slice(0, 80)).toThrow(message);
    }
    const fine = loadConfig({
      env: {
        CONDUCTOR_ORCHESTRATOR_NODE_ID: `node-1.eu_west.${"x".repeat(48)}`,
        CONDUCTOR_AGENT_MODEL: "claude-sonnet-4-5@20250929",
        CONDUCTOR_AGENT_ALLOWED_TOOLS: " Read , Bash(git log:*) ",
        CONDUCTOR_ORCHESTRATOR_AGENT_HOSTS: "",
      },
    });
    expect(fine.orchestrator.node_id).toHaveLength(63);
    expect(fine.agent.allowed_tools).toEqual(["Read", "Bash(git log:*)"]);
    expect(loadConfig({}).orchestrator.node_id).toMatch(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/);
  });

  it("takes fractions of a second in every duration, as the README says", () => {
    const durations = configKeys().filter((k) => /_seconds$|message_timeout$/.test(k));
    expect(durations).toContain("runtime.stop_grace_seconds");
    for (const key of durations) {
      const [section, name] = key.split(".") as [keyof ReturnType<typeof loadConfig>, string];
      const config = loadConfig({ env: { [envName(key)]: "1.5" } });
      expect((config[section] as Record<string, unknown>)[name], key).toBe(1.5);
    }
    const readme = readFileSync(path.join(import.meta.dirname, "..", "..", "README.md"), "utf8");
    expect(readme).toContain("durations in seconds; fractions such as 1.5 are fine");
  });

  it("bounds sizes and counts", () => {
    const cases: [string, string, RegExp][] = [
      ["CONDUCTOR_AGENT_CONTAINER_MEMORY", "5000g", /from 4m to 1024g/],
      ["CONDUCTOR_ORCHESTRATOR_MAX_WORKERS", "1e9", /at most 100000/],
      ["CONDUCTOR_ORCHESTRATOR_MAX_PROMPT_BYTES", "50000000", /at most 131071/],
      ["CONDUCTOR_AGENT_CONTAINER_PIDS", "99999999", /at most 4194304/],
      [
        "CONDUCTOR_AGENT_ALLOWED_TOOLS",
        Array.from({ length: 101 }, (_, i) => `T${i}`).join(","),
        /at most 100 entries/,
      ],
    ];
    for (const [name, value, message] of cases) {
      const e = catchConfigError(() => loadConfig({ env: { [name]: value } }));
      expect(e.message).toMatch(message);
      expect(e.message).toContain(name);
    }
  });
});

/**
 * The README's configuration table against `conductor config print`: every key in one is in the
 * other, and the default the README gives is the one the configuration has.
 */
describe("the README's configuration reference", () => {
  const readme = readFileSync(path.join(import.meta.dirname, "..", "..", "README.md"), "utf8");
  const section = readme.slice(
    readme.indexOf("## Configuration"),
    readme.indexOf("## Observability"),
  );
  const rows = section
    .split("\n")
    .filter((l) => l.startsWith("| `"))
    .map((l) => l.split("|").map((c) => c.trim()));
  const cwd = "/project";
  const config = loadConfig({ cwd, env: {} }) as unknown as Record<string, Record<string, unknown>>;
  const value = (key: string) => {
    const [s, k] = key.split(".");
    return config[s!]![k!];
  };
  /** Defaults the README says in words, as they are under `cwd` with an empty environment. */
  const inWords: Record<string, unknown> = {
    "host name": hostname(),
    "the npm package's binary": "",
    "CLI default": "",
    none: "",
    "0 (the machine's)": 0,
    "`{}`": {},
    "`$ANTHROPIC_API_KEY`": "",
    "`$ANTHROPIC_BASE_URL`": "",
    "`$DOCKER_HOST`": "",
    "`$XDG_RUNTIME_DIR`": "",
    "`$DOCKER_HOST` or the engine's usual socket": "",
    "-1 (the CLI's default)": -1,
    "a tenth of `inbox_limit`": 100,
    "`{}` (podman: nofile 4096, nproc 16384)": {},
    "Anthropic's list prices by model family; unknown models at Opus prices": DEFAULT_PRICES,
    "Read, Write, Edit, MultiEdit, Glob, Grep, LS": [
      "Read",
      "Write",
      "Edit",
      "MultiEdit",
      "Glob",
      "Grep",
      "LS",
    ],
  };
  const expected = (text: string): unknown => {
    if (text in inWords) return inWords[text];
    const literal = text.replace(/^`|`$/g, "");
    if (/^-?\d+(\.\d+)?$/.test(literal)) return Number(literal);
    if (literal === "true" || literal === "false") return literal === "true";
    if (/^\d+[kmg]$/.test(literal))
      return Number(literal.slice(0, -1)) * 1024 ** " kmg".indexOf(literal.at(-1)!);
    if (literal === "[]") return [];
    const placeholder = /^\[?<socket_dir>\/([^\]]+)\]?$/.exec(literal);
    if (placeholder) {
      const p = path.join(cwd, ".conductor/run", placeholder[1]!);
      return literal.startsWith("[") ? [p] : p;
    }
    if (literal.startsWith(".conductor/")) return path.join(cwd, literal);
    return literal;
  };
  const documented = rows.flatMap(([, keys, defaults, maxima]) => {
    const names = [...keys!.matchAll(/`([a-z_]+\.[a-z_]+)`/g)].map((m) => m[1]!);
    const each = (text: string) =>
      names.length > 1 ? text.split(",").map((d) => d.trim()) : [text];
    const values = each(defaults!);
    const most = each(maxima!);
    return names.map((k, i) => [k, values[i]!, most[i] ?? ""] as const);
  });

  it("lists every key config print shows, and no other", () => {
    expect(documented.map(([k]) => k).sort()).toEqual(configKeys().sort());
  });

  it("gives the upper bounds loadConfig enforces", () => {
    let checked = 0;
    for (const [key, , most] of documented) {
      const n = /^(\d+)(g?)(?: \(|$)/.exec(most);
      if (!n) continue;
      const max = n[2] ? `${n[1]}g` : n[1]!;
      const above = n[2] ? `${Number(n[1]) + 1}g` : String(Number(n[1]) + 1);
      const name = envName(key);
      const e = catchConfigError(() => loadConfig({ env: { [name]: above } }));
      expect(e.message).toContain(`"${key}"`);
      expect(e.message).toContain(name);
      if (!/sender_share|reply_reserve/.test(key))
        expect(() => loadConfig({ env: { [name]: max } }), key).not.toThrow();
      checked++;
    }
    expect(checked).toBeGreaterThanOrEqual(25);
  });

  it("gives the defaults config print shows", () => {
    for (const [key, text] of documented)
      expect({ key, value: value(key) }).toEqual({ key, value: expected(text) });
  });
});

function catchConfigError(f: () => unknown): ConfigError {
  try {
    f();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error("expected a ConfigError");
}
