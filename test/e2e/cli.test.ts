import { execFile, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskSpecSchema, TaskState } from "../../gen/conductor/v1/task_pb.js";
import { ROOT, scripted, startService, waitForEnd, waitForState } from "../harness.ts";
import { useConductor } from "./use-conductor.ts";

const CLI = path.join(ROOT, "bin", "conductor.js");

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the real `conductor` binary in `cwd` with only `env` (and PATH) set. */
function conductor(
  args: string[],
  opts: { cwd?: string; env?: Record<string, string>; stdin?: string } = {},
): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      process.execPath,
      [CLI, ...args],
      {
        cwd: opts.cwd ?? ROOT,
        env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ...opts.env },
        maxBuffer: 64 * 1024 * 1024,
      },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
        if (error && code === -1)
          reject(new Error(`conductor ${args.join(" ")}: ${error.message}`));
        else resolve({ code, stdout, stderr });
      },
    );
    child.stdin?.end(opts.stdin ?? "");
  });
}

/**
 * Runs the real `conductor` binary with its stdout on a pipe whose reader goes away after the
 * first chunk, as `conductor … | head -c 10` does.
 */
function conductorIntoHead(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stderr: string; first: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: ROOT,
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let first = "";
    let stderr = "";
    child.stdout.once("data", (chunk: Buffer) => {
      first = chunk.toString();
      child.stdout.destroy();
    });
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stderr, first }));
  });
}

describe("the conductor CLI without a running Conductor", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), "conductor-cli-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("says no Conductor runs, and how to start one, instead of connect ENOENT", async () => {
    const r = await conductor(["tasks"], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no Conductor is running/);
    // Advice that works from the project folder: this conductor by its path, not "npx conductor".
    expect(r.stderr).toContain(`"${CLI} up"`);
    expect(r.stderr).toMatch(/CONDUCTOR_SOCKET/);
    expect(r.stderr).not.toMatch(/ENOENT|\[Internal\]/);
  });

  it("looks for the nearest .conductor/ folder above the working folder", async () => {
    const project = path.join(dir, "project");
    const deep = path.join(project, "src", "lib");
    mkdirSync(path.join(project, ".conductor", "run"), { recursive: true });
    mkdirSync(deep, { recursive: true });
    const r = await conductor(["agents"], { cwd: deep });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(path.join(project, ".conductor", "run", "orchestrator.sock"));
    expect(r.stderr).toMatch(/nearest \.conductor\/ folder/);
  });

  it("has help for every command, from --help and from help <command>", async () => {
    const overview = await conductor(["help"]);
    expect(overview.code).toBe(0);
    const commands = [
      "up",
      "submit",
      "watch",
      "get",
      "tasks",
      "agents",
      "cancel",
      "stats",
      "certs",
      "nodes",
      "types",
    ];
    const helps = await Promise.all(
      commands.map(
        async (c) => [c, await conductor([c, "--help"]), await conductor(["help", c])] as const,
      ),
    );
    for (const [command, a, b] of helps) {
      expect(overview.stdout).toMatch(new RegExp(`^  ${command} `, "m"));
      expect(a.code).toBe(0);
      expect(a.stdout).toBe(b.stdout);
      expect(a.stdout).toMatch(new RegExp(`^conductor ${command}`));
      expect(a.stdout).toContain("--json");
    }
  });

  it("has a submit flag for every TaskSpec field", async () => {
    const help = (await conductor(["submit", "--help"])).stdout;
    const flagOf: Record<string, string> = {
      prompt: "--file",
      timeout_seconds: "--timeout",
      labels: "--label",
      workspace: "--repo",
      checks: "--check",
      resources: "--cpus",
      params: "--param",
    };
    for (const field of TaskSpecSchema.fields) {
      const flag = flagOf[field.name] ?? `--${field.name.replaceAll("_", "-")}`;
      expect(help, field.name).toContain(flag);
    }
  });

  it("refuses an unknown flag or command with exit code 2 and where to look", async () => {
    const flag = await conductor(["submit", "hi", "--priorty", "3"]);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/'--priorty'.*conductor help submit/);
    const command = await conductor(["sumbit", "hi"]);
    expect(command.code).toBe(2);
    expect(command.stderr).toMatch(/unknown command "sumbit"/);
    const empty = await conductor(["get", ""]);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/usage: conductor get <task-id>/);
  });

  it("lists for each service command only the flags that apply to it", async () => {
    const helps = await Promise.all(
      ["up", "agent-host", "orchestrator", "broker", "config"].map(
        async (c) => [c, (await conductor(["help", c])).stdout] as const,
      ),
    );
    for (const [command, help] of helps) {
      const runsAgents = command === "up" || command === "agent-host";
      expect(help.includes("--agents N"), command).toBe(runsAgents);
      expect(help.includes("--runtime R"), command).toBe(runsAgents);
      expect(help.includes("--metrics-port N"), command).toBe(command !== "config");
    }
  });

  it("says how to submit a prompt that starts with -, quoting it whole, and where flags go", async () => {
    const dash = await conductor(["submit", "- fix foo"]);
    expect(dash.code).toBe(2);
    expect(dash.stderr).toBe(
      'conductor: "- fix foo" starts with "-", so it reads as flags; put it after "--", as in: conductor submit -- "- fix foo"\n',
    );
    const after = await conductor(["submit", "--", "fix the tests", "--wait"]);
    expect(after.code).toBe(2);
    expect(after.stderr).toMatch(/expected one prompt, got 2 arguments: --wait came after "--"/);
    expect(after.stderr).toContain(
      'flags go before "--": conductor submit --wait -- "fix the tests"',
    );
    const words = await conductor(["submit", "fix", "it"]);
    expect(words.stderr).toMatch(/got 2 arguments: quote the prompt as one argument/);
  });

  it("reports every configuration problem at once, naming the variables", async () => {
    const r = await conductor(["config", "print"], {
      cwd: dir,
      env: { CONDUCTOR_BOGUS_KEY: "1", CONDUCTOR_AGENT_IDLE_TIMEOUT_SECONDS: "3000000" },
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/2 problems/);
    expect(r.stderr).toMatch(/CONDUCTOR_BOGUS_KEY is not a configuration key/);
    expect(r.stderr).toMatch(/CONDUCTOR_AGENT_IDLE_TIMEOUT_SECONDS=3000000: .*must be at most/);
  });
});

/** A folder of PATH whose `node` is older than 24 (a system Node 20), if there is one. */
function olderNodeDir(): string | undefined {
  for (const dir of (process.env["PATH"] ?? "").split(path.delimiter)) {
    if (!dir || dir.includes("node_modules") || !existsSync(path.join(dir, "node"))) continue;
    const v = spawnSync(path.join(dir, "node"), ["-p", "process.versions.node"], {
      encoding: "utf8",
      timeout: 10_000,
    }).stdout;
    if (Number(v.split(".")[0]) < 24) return dir;
  }
  return undefined;
}

describe("the conductor command from a shell whose node is older", () => {
  const older = olderNodeDir();
  it.skipIf(!older)("runs itself on Node 24, with the same output and exit code", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-cli-old-node-"));
    try {
      const run = (args: string[], PATH: string) =>
        new Promise<Ran>((resolve) =>
          // As a shell runs node_modules/.bin/conductor: by its #! line, with PATH's node.
          execFile(CLI, args, { cwd: dir, env: { PATH } }, (error, stdout, stderr) =>
            resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
          ),
        );
      const slow = `${older}${path.delimiter}${process.env["PATH"]}`;
      const fast = `${path.dirname(process.execPath)}${path.delimiter}${slow}`;
      const [help, helpFast, missing] = await Promise.all([
        run(["help", "submit"], slow),
        run(["help", "submit"], fast),
        run(["tasks"], slow),
      ]);
      expect(help).toEqual({ ...helpFast, code: 0 });
      expect(missing.code).toBe(1);
      expect(missing.stderr).toMatch(/no Conductor is running/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the conductor CLI beside a running Conductor", () => {
  const setup = useConductor(() => ({ agents: 1 }));
  let project: string;
  let env: Record<string, string>;
  beforeAll(() => {
    // A project whose .conductor/run/orchestrator.sock is the running Conductor's socket.
    project = mkdtempSync(path.join(tmpdir(), "conductor-cli-project-"));
    mkdirSync(path.join(project, ".conductor", "run"), { recursive: true });
    mkdirSync(path.join(project, "sub"));
    symlinkSync(
      path.join(setup.conductor.socketDir, "orchestrator.sock"),
      path.join(project, ".conductor", "run", "orchestrator.sock"),
    );
    env = { CONDUCTOR_SOCKET: path.join(setup.conductor.socketDir, "orchestrator.sock") };
  });
  afterAll(() => rmSync(project, { recursive: true, force: true }));

  it("submits with every TaskSpec flag, and from a file, stdin or after --", async () => {
    const file = path.join(project, "prompt.txt");
    writeFileSync(file, "from a file\nsecond line");
    const r = await conductor(
      [
        "submit",
        "-f",
        file,
        "--type",
        "analysis",
        "--priority",
        "4",
        "--timeout",
        "120",
        "--max-attempts",
        "2",
        "--model",
        "claude-test",
        "--max-turns",
        "3",
        "--allowed-tools",
        "Read,Write",
        "--allowed-tools",
        "Bash",
        "--permission-mode",
        "plan",
        "--label",
        "team=infra",
        "--label",
        "ticket=OPS-1",
        "--idempotency-key",
        `cli-${path.basename(project)}`,
        "--json",
      ],
      { cwd: path.join(project, "sub") },
    );
    expect(r.stderr).toBe("");
    const task = JSON.parse(r.stdout) as { id: string; spec: Record<string, unknown> };
    expect(task.spec).toEqual({
      prompt: "from a file\nsecond line",
      type: "analysis",
      priority: 4,
      timeoutSeconds: 120,
      maxAttempts: 2,
      model: "claude-test",
      maxTurns: 3,
      allowedTools: ["Read", "Write", "Bash"],
      permissionMode: "plan",
      labels: { team: "infra", ticket: "OPS-1" },
      idempotencyKey: `cli-${path.basename(project)}`,
    });
    await waitForEnd(setup.conductor.client, task.id);
    const stdin = await conductor(["submit", "-", "--json"], { env, stdin: "from stdin" });
    expect(JSON.parse(stdin.stdout)).toMatchObject({ spec: { prompt: "from stdin" } });
    const dash = await conductor(["submit", "--json", "--", "- fix the failing test"], { env });
    expect(JSON.parse(dash.stdout)).toMatchObject({ spec: { prompt: "- fix the failing test" } });
    for (const s of [stdin, dash])
      await waitForEnd(setup.conductor.client, (JSON.parse(s.stdout) as { id: string }).id);
    const bad = await conductor(["submit", "x", "--label", "nokey"], { env });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--label "nokey": expected KEY=VALUE/);
  });

  it("prints what a person reads: aligned tables, numbers, costs without float noise", async () => {
    const { client } = setup.conductor;
    const done = await conductor(["submit", scripted([{ text: "counted" }]), "--wait"], { env });
    expect(done.code).toBe(0);
    const id = done.stdout.split("\n")[0]!;
    expect(done.stdout).toMatch(/^ {2}1 turn · 10 tokens in, 5 out · \$[0-9.]+ · /m);
    const get = await conductor(["get", id], { cwd: path.join(project, "sub") });
    expect(get.stdout).toMatch(/^state +SUCCEEDED$/m);
    expect(get.stdout).toMatch(/^run +1 turn · 10 tokens in, 5 out/m);
    const stats = await conductor(["stats"], { env });
    expect(stats.stdout).toMatch(/^tokens +\d[\d,]* in · \d[\d,]* out$/m);
    for (const text of [done.stdout, get.stdout, stats.stdout]) {
      expect(text).not.toMatch(/\d\.\d{8,}/); // 0.00028000000000000003
      expect(text).not.toMatch(/"\d+"/); // counts as strings
    }

    // One agent busy with a task that hangs: the agents table shows its 36-character id aligned.
    const busy = (await conductor(["submit", scripted([{ hang: true }])], { env })).stdout.trim();
    await waitForState(client, busy, TaskState.RUNNING);
    const agents = (await conductor(["agents"], { env })).stdout.trimEnd().split("\n");
    expect(agents).toHaveLength(2);
    expect(agents[1]).toContain(busy);
    expect(agents[1]!.indexOf("/")).toBe(agents[0]!.indexOf("WORKSPACE"));
    expect(agents[1]!.indexOf(busy)).toBe(agents[0]!.indexOf("TASK"));

    // A task cancelled while queued shows no run it never had.
    const queued = (await conductor(["submit", "never runs"], { env })).stdout.trim();
    const cancelled = await conductor(["cancel", queued], { env });
    expect(cancelled.stdout.trim()).toBe(`${queued} CANCELLED`);
    const watched = await conductor(["watch", queued], { env });
    expect(watched.code).toBe(1);
    expect(watched.stdout).toMatch(/\[CANCELLED\]/);
    expect(watched.stdout).not.toMatch(/turns?|tokens|\$/);
    await conductor(["cancel", busy], { env });
    await waitForEnd(client, busy);

    const tasks = (await conductor(["tasks", "--limit", "2"], { env })).stdout
      .trimEnd()
      .split("\n");
    expect(tasks[0]).toMatch(/^ID +STATE +PRI +AGENT +TRIES +CREATED +PROMPT$/);
    expect(tasks.slice(1, 3).every((l) => / (just now|\d+ s ago|\d+ min ago) /.test(l))).toBe(true);
    expect(tasks[3]).toMatch(/more tasks: --limit \d+ shows more/);
  });

  it("prints JSON with --json on every client command", async () => {
    const id = (
      await conductor(["submit", scripted([{ text: "j" }]), "--wait", "--json"], { env })
    ).stdout
      .trim()
      .split("\n")
      .at(-1)!;
    const task = JSON.parse(id) as { id: string };
    const hanging = JSON.parse(
      (await conductor(["submit", scripted([{ hang: true }]), "--json"], { env })).stdout,
    ) as { id: string };
    const cancelled = await conductor(["cancel", hanging.id, "--json"], { env });
    expect(JSON.parse(cancelled.stdout)).toMatchObject({ id: hanging.id });
    await waitForEnd(setup.conductor.client, hanging.id);
    for (const args of [
      ["get", task.id],
      ["watch", task.id],
      ["tasks"],
      ["agents"],
      ["stats"],
      ["config", "print"],
    ]) {
      const r = await conductor([...args, "--json"], { env });
      expect(r.stderr, args.join(" ")).toBe("");
      const text = r.stdout.trim();
      const values =
        args[0] === "get" || args[0] === "stats" || args[0] === "config"
          ? [text]
          : text.split("\n");
      for (const v of values)
        expect(() => JSON.parse(v) as unknown, `${args.join(" ")}: ${v}`).not.toThrow();
    }
  });
  it("writes all of a large output to a pipe, follows pages, and stops quietly when the reader goes", async () => {
    const { client } = setup.conductor;
    // A result of 90,000 characters: more than a pipe holds, and cut in GetTask.
    const big = "y".repeat(90_000);
    const done = await client.submitTask({ spec: { prompt: scripted([{ text: big }]) } });
    await waitForEnd(client, done.task!.id);
    const output = await conductor(["output", done.task!.id], { env });
    expect(output.code).toBe(0);
    expect(output.stdout.length).toBe(big.length);
    expect(output.stdout).toBe(big);
    const asJson = await conductor(["output", done.task!.id, "--json"], { env });
    expect(asJson.code).toBe(0);
    const pieces = asJson.stdout
      .trimEnd()
      .split("\n")
      .map((l) => (JSON.parse(l) as { text: string }).text);
    expect(pieces.join("")).toBe(big);
    const missing = await conductor(["output", done.task!.id, "--event", "9999"], { env });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(
      new RegExp(
        `task ${done.task!.id} has no event 9999 \\(dropped by event retention, or not yet happened\\) \\[NotFound\\]`,
      ),
    );

    // The one agent busy, then 30 tasks of 90 KB prompts: about 2.7 MB, over a 2 MiB page.
    const busy = await client.submitTask({ spec: { prompt: scripted([{ hang: true }]) } });
    await waitForState(client, busy.task!.id, TaskState.RUNNING);
    const queued: string[] = [];
    for (let i = 0; i < 30; i++) {
      const { task } = await client.submitTask({
        spec: { prompt: `queued ${i} ${"q".repeat(90_000)}` },
      });
      queued.push(task!.id);
    }
    try {
      let total = 0;
      for (let token = "", first = true; first || token; first = false) {
        const page = await client.listTasks({ pageSize: 1000, pageToken: token });
        total += page.tasks.length;
        token = page.nextPageToken;
      }
      expect(total).toBeGreaterThan(31);
      expect(total).toBeLessThan(1000);

      const json = await conductor(["tasks", "--json", "-n", "1000"], { env });
      expect(json.code).toBe(0);
      const lines = json.stdout.trimEnd().split("\n");
      expect(json.stdout.length).toBeGreaterThan(2.7e6);
      expect(lines).toHaveLength(total);
      const ids = lines.map((l) => (JSON.parse(l) as { id: string }).id);
      expect(ids.slice(0, 30)).toEqual([...queued].reverse());

      const all = await conductor(["tasks", "-n", "1000"], { env });
      const rows = all.stdout.trimEnd().split("\n");
      expect(rows).toHaveLength(total + 1); // the header, no hint: nothing more
      expect(all.stdout).not.toMatch(/more tasks/);
      const some = await conductor(["tasks", "-n", "31"], { env });
      const shown = some.stdout.trimEnd().split("\n");
      expect(shown).toHaveLength(1 + 31 + 1);
      expect(shown.at(-1)).toBe("… more tasks: --limit 155 shows more");

      // The text is small enough for a pipe's buffer; the JSON is not.
      const head = await conductorIntoHead(["tasks", "--json", "-n", "1000"], env);
      expect(head.first.length).toBeGreaterThan(0);
      expect(head.stderr).toBe("");
      expect(head.code).toBe(141);
    } finally {
      for (const id of [...queued, busy.task!.id]) await client.cancelTask({ id });
      await waitForEnd(client, busy.task!.id);
    }
  });
});

describe("the conductor services as a person starts them", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), "conductor-cli-serve-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const base = (name: string) => [
    "--socket-dir",
    path.join(dir, name, "run"),
    "--data-dir",
    path.join(dir, name, "data"),
    "--metrics-port",
    "0",
  ];

  it("names each service's own socket in its ready line, and warns when no API key is set", async () => {
    const broker = await startService("broker", base("split"), {});
    const host = await startService("agent-host", [...base("split"), "--agents", "1"], {});
    try {
      expect(broker.ready["socket"]).toBe(path.join(dir, "split", "run", "broker.sock"));
      expect(host.ready["socket"]).toBe(path.join(dir, "split", "run", "agent-host.sock"));
      expect(host.stderr()).toMatch(/no Anthropic API key is set/);
      expect(host.stderr()).toMatch(/Set ANTHROPIC_API_KEY/);
      expect(broker.stderr()).not.toMatch(/API key/);
    } finally {
      await host.stop();
      await broker.stop();
    }
  });

  it("says how to choose another metrics port when its port is taken", async () => {
    const first = await startService("broker", base("first"), {});
    try {
      const port = new URL(String(first.ready["metrics"])).port;
      const second = await conductor(["broker", ...base("second"), "--metrics-port", port]);
      expect(second.code).toBe(1);
      expect(second.stderr).toMatch(new RegExp(`port ${port} .* is in use`));
      expect(second.stderr).toMatch(
        /--metrics-port N or CONDUCTOR_OBSERVABILITY_BROKER_METRICS_PORT=N/,
      );
    } finally {
      await first.stop();
    }
  });

  it("prints the console's URL with its token, and will not serve it off loopback without TLS", async () => {
    const args = [...base("console").slice(0, 4), "--metrics-port", "-1"];
    const orch = await startService("orchestrator", [...args, "--console", "127.0.0.1:0"], {});
    try {
      const url = new URL(String(orch.ready["console"]));
      expect(url.origin).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(url.searchParams.get("token")).toMatch(/^[A-Za-z0-9_-]{43}$/);
      const listTasks = (token: string) =>
        fetch(`${url.origin}/conductor.v1.OrchestratorService/ListTasks`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
          body: "{}",
        });
      expect((await listTasks(url.searchParams.get("token")!)).status).toBe(200);
      expect((await listTasks("guess")).status).toBe(401);
    } finally {
      await orch.stop();
    }
    expect(orch.stderr()).not.toContain(orch.ready["console"] as string); // the token stays out of logs
    const remote = await conductor(["orchestrator", ...args, "--console", "0.0.0.0:0"], {
      env: { CONDUCTOR_OBSERVABILITY_LOG_LEVEL: "warn" },
    });
    expect(remote.code).toBe(1);
    expect(remote.stderr).toMatch(/observability\.console .*0\.0\.0\.0:0.* needs tls\.ca_file/);
  });

  it("writes logs for a person with --log-format text, JSON lines otherwise", async () => {
    const text = await startService("broker", [...base("text"), "--log-format", "text"], {});
    await text.stop();
    const lines = text.stderr().trim().split("\n");
    expect(lines.some((l) => /^\d\d:\d\d:\d\d INFO +broker/.test(l))).toBe(true);
    expect(lines.every((l) => !l.startsWith("{"))).toBe(true);
    const json = await startService("broker", base("json"), {});
    await json.stop();
    for (const l of json.stderr().trim().split("\n"))
      expect(() => JSON.parse(l) as unknown).not.toThrow();
  });

  it("takes --metrics-port -1 as documented, and greets a terminal with its agents counted right", async () => {
    for (const command of ["broker", "orchestrator"]) {
      const args = [...base(`off-${command}`).slice(0, 4), "--metrics-port", "-1"];
      const service = await startService(command, args, {});
      await service.stop();
      expect(service.ready["metrics"], command).toBeNull();
    }
    // On a terminal (script(1) gives it one) the AgentHost greets a person; Ctrl-C stops it.
    const args = [...base("tty").slice(0, 4), "--metrics-port", "-1", "--agents", "1"];
    // exec: the AgentHost itself takes the terminal's Ctrl-C, not a shell that would die of
    // it at once and end the session before the AgentHost has said it is stopping.
    const command = `exec ${[process.execPath, CLI, "agent-host", ...args].map((a) => `'${a}'`).join(" ")}`;
    const tty = spawn("script", ["-qec", command, "/dev/null"], {
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" },
      stdio: ["pipe", "pipe", "inherit"],
    });
    let seen = "";
    let stopped = false;
    const exited = new Promise<number | null>((resolve) => tty.on("close", resolve));
    tty.stdout.on("data", (chunk: Buffer) => {
      seen += chunk.toString();
      if (stopped || !seen.includes("Stop with Ctrl-C.")) return;
      stopped = true;
      // Ctrl-C alone: closing script(1)'s stdin too may hang up the session before the
      // interrupt is handled (the service then dies of SIGHUP, saying nothing).
      tty.stdin.write("\x03");
    });
    const code = await exited;
    tty.stdin.destroy();
    expect(seen).toContain("The AgentHost is serving (1 agent, process runtime).");
    expect(seen).not.toMatch(/1 agents|metrics +http/);
    // It stopped on Ctrl-C (script(1) may report the interrupt as 130).
    expect([0, 130], seen).toContain(code);
    expect(seen, `exit code ${code}`).toMatch(/shutting down/);
  });
});
