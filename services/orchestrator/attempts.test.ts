import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { AgentSchema, AgentState } from "../../gen/conductor/v1/agent_pb.js";
import { RunOutcomeSchema } from "../../gen/conductor/v1/agent_host_pb.js";
import { TaskState } from "../../gen/conductor/v1/task_pb.js";
import { silentLogger } from "../shared/log.ts";
import { neverRan, nextStep, UnconfirmedAttempts, type AttemptEnd } from "./attempts.ts";
import { HostRegistry } from "./hosts.ts";

const HOST = "/run/conductor/agent-host.sock";
const TIMEOUT = 600_000;

function systemError(code: string, syscall: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${syscall} ${code} ${HOST}`), { code, syscall });
}

describe("neverRan", () => {
  it("takes a refusal before the run started as proof that nothing ran", () => {
    for (const code of [Code.NotFound, Code.FailedPrecondition, Code.InvalidArgument])
      expect(neverRan(new ConnectError("no", code), false), Code[code]).toBe(true);
  });

  it("takes a connection that was never made as proof that nothing ran", () => {
    const refused = systemError("ECONNREFUSED", "connect");
    const missing = systemError("ENOENT", "connect");
    expect(neverRan(ConnectError.from(refused, Code.Unavailable), false)).toBe(true);
    expect(neverRan(ConnectError.from(missing, Code.Internal), false)).toBe(true);
  });

  it("leaves every other break unconfirmed", () => {
    expect(neverRan(new ConnectError("gone", Code.Unavailable), false)).toBe(false);
    const reset = systemError("ECONNRESET", "read");
    expect(neverRan(ConnectError.from(reset, Code.Unavailable), false)).toBe(false);
    expect(neverRan(new ConnectError("reset", Code.Canceled), false)).toBe(false);
    expect(neverRan(new ConnectError("boom", Code.Internal), false)).toBe(false);
  });

  it("never calls a started run unstarted, whatever the code", () => {
    expect(neverRan(new ConnectError("busy", Code.FailedPrecondition), true)).toBe(false);
    const refused = systemError("ECONNREFUSED", "connect");
    expect(neverRan(ConnectError.from(refused, Code.Unavailable), true)).toBe(false);
  });
});

describe("nextStep", () => {
  const since = 1_000_000;

  it("ends the wait once the host answers without the task", () => {
    const step = nextStep(HOST, since, { kind: "idle" }, since + 10, TIMEOUT);
    expect(step).toEqual({
      kind: "over",
      reason: `agent host ${HOST} confirmed that no agent runs it any more`,
    });
  });

  it("asks a host that still runs the task to end it, and keeps waiting", () => {
    const late = since + 10 * TIMEOUT;
    expect(nextStep(HOST, since, { kind: "runs-it" }, late, TIMEOUT)).toEqual({
      kind: "cancel-run",
    });
  });

  it("waits for a silent host until the timeout, then takes the attempt as over", () => {
    expect(nextStep(HOST, since, { kind: "silent" }, since + TIMEOUT - 1, TIMEOUT)).toEqual({
      kind: "wait",
    });
    const step = nextStep(HOST, since, { kind: "silent" }, since + TIMEOUT, TIMEOUT);
    expect(step.kind).toBe("over");
    expect(step.kind === "over" && step.reason).toBe(
      `agent host ${HOST} did not answer for 600 s (orchestrator.unconfirmed_attempt_timeout_seconds), so the attempt is taken as over: an agent host's runs end with it`,
    );
  });

  it("treats a host no longer configured as silent", () => {
    expect(nextStep(HOST, since, { kind: "unconfigured" }, since + 5, TIMEOUT).kind).toBe("wait");
    const step = nextStep(HOST, since, { kind: "unconfigured" }, since + TIMEOUT, TIMEOUT);
    expect(step.kind === "over" && step.reason).toMatch(
      /is not in orchestrator.agent_hosts any more; waited for 600 s/,
    );
  });

  it("does not time out a host that answers, only not yet since the attempt was lost", () => {
    expect(nextStep(HOST, since, { kind: "stale" }, since + 2 * TIMEOUT, TIMEOUT)).toEqual({
      kind: "wait",
    });
  });
});

describe("UnconfirmedAttempts", () => {
  /** A registry whose one link is set by hand (no poll runs; nothing listens on the socket). */
  function setUp(timeoutMs = 1000) {
    const hosts = new HostRegistry([HOST], 200, silentLogger);
    const link = hosts.links[0]!;
    const unconfirmed = new UnconfirmedAttempts(hosts, {
      timeoutMs,
      rpcTimeoutMs: 200,
      log: silentLogger,
    });
    const answer = (taskId: string) => {
      hosts.generation++;
      link.reachable = true;
      link.answeredIn = hosts.generation;
      link.agents = [
        create(AgentSchema, {
          id: "agent-1",
          state: taskId ? AgentState.BUSY : AgentState.IDLE,
          taskId,
        }),
      ];
    };
    return { hosts, link, unconfirmed, answer };
  }
  const place = (taskId: string) => ({ taskId, attempt: 1, host: HOST, agentId: "agent-1" });
  const settle = (p: Promise<AttemptEnd>) => {
    const seen: { end?: AttemptEnd } = {};
    p.then(
      (end) => (seen.end = end),
      () => undefined,
    );
    return seen;
  };
  const tick = () => new Promise((resolve) => setImmediate(resolve));

  it("counts only answers to polls begun after the attempt was lost", async () => {
    const { link, unconfirmed, answer } = setUp();
    answer("t1"); // a poll that was under way when the attempt was lost
    link.agents = []; // ...and answered as if the agent were idle
    const seen = settle(unconfirmed.wait(place("t1"), 0));
    unconfirmed.check(5_000);
    await tick();
    expect(seen.end).toBeUndefined();
    answer("t1"); // a later poll: the agent still runs it
    unconfirmed.check(5_000);
    await tick();
    expect(seen.end).toBeUndefined();
    answer("");
    unconfirmed.check(5_001);
    await tick();
    expect(seen.end).toEqual({
      kind: "confirmed",
      reason: `agent host ${HOST} confirmed that no agent runs it any more`,
    });
    await unconfirmed.close();
  });

  it("times a silent host out from the last time it answered", async () => {
    const { link, unconfirmed, answer } = setUp(1000);
    const seen = settle(unconfirmed.wait(place("t2"), 0));
    answer("t2");
    unconfirmed.check(900); // still runs it: the clock restarts
    link.reachable = false;
    unconfirmed.check(1500);
    await tick();
    expect(seen.end).toBeUndefined();
    unconfirmed.check(1900);
    await tick();
    expect(seen.end?.kind).toBe("confirmed");
    await unconfirmed.close();
  });

  it("waits for a joined node that still lists the run, however long, while it holds its lease", async () => {
    const hosts = new HostRegistry([], 200, silentLogger);
    const link = hosts.join(
      {
        name: "node-a",
        runtime: "",
        version: "",
        labels: {},
        cpus: 0,
        memoryBytes: 0n,
        agentsTotal: 1,
      },
      "i1",
      0,
      4000,
    );
    const unconfirmed = new UnconfirmedAttempts(hosts, {
      timeoutMs: 1000,
      reportGraceMs: 300,
      rpcTimeoutMs: 200,
      log: silentLogger,
    });
    const at = { taskId: "t5", attempt: 1, host: "node-a", agentId: "node-a:agent-1" };
    const beat = (runs: string[]) => {
      link.joined!.beats++;
      link.joined!.runs = new Set(runs);
    };
    link.joined!.runs = new Set(["t5#1"]);
    const seen = settle(unconfirmed.wait(at, 0));
    link.reachable = false; // its tunnel is down: not a sign the run is over
    unconfirmed.check(5_000); // no heartbeat since: its lease decides
    beat(["t5#1"]);
    unconfirmed.check(60_000); // listed: it goes on
    await tick();
    expect(seen.end).toBeUndefined();
    beat([]); // ended there: its report follows
    unconfirmed.check(60_100);
    await tick();
    expect(seen.end).toBeUndefined();
    const outcome = create(RunOutcomeSchema, { state: TaskState.SUCCEEDED });
    expect(unconfirmed.report("node-a", "t5", 2, outcome)).toBe(false); // not its attempt
    expect(unconfirmed.report("node-a", "t5", 1, outcome)).toBe(true);
    await tick();
    expect(seen.end).toEqual({ kind: "reported", outcome });
    // A node that no longer lists a run and never reports it: over after the grace.
    const silent = settle(unconfirmed.wait({ ...at, taskId: "t6" }, 60_000));
    beat([]);
    unconfirmed.check(60_200);
    await tick();
    expect(silent.end).toBeUndefined();
    unconfirmed.check(60_400);
    await tick();
    expect(silent.end?.kind === "confirmed" && silent.end.reason).toMatch(
      /^node node-a no longer runs it and reported no outcome for 0.4 s/,
    );
    // A report that came before the wait began ends the wait as it begins.
    unconfirmed.keepEarly("node-a", "t7", 1, outcome);
    const early = settle(unconfirmed.wait({ ...at, taskId: "t7" }, 61_000));
    await tick();
    expect(early.end).toEqual({ kind: "reported", outcome });
    // The node's lease lapsed: over at once.
    const lapsed = settle(unconfirmed.wait({ ...at, taskId: "t8" }, 61_000));
    link.lost = true;
    unconfirmed.check(61_001);
    await tick();
    expect(lapsed.end?.kind === "confirmed" && lapsed.end.reason).toMatch(/^node node-a lost/);
    await unconfirmed.close();
  });

  it("ends waits at once on cancel and on close", async () => {
    const { unconfirmed } = setUp();
    const cancelled = settle(unconfirmed.wait(place("t3"), 0));
    const closed = settle(unconfirmed.wait(place("t4"), 0));
    expect(unconfirmed.cancel("t3")).toBe(true);
    expect(unconfirmed.cancel("unknown")).toBe(false);
    await unconfirmed.close(); // also waits for the CancelRun cancel() sent (it fails: no host)
    expect(cancelled.end).toEqual({ kind: "cancelled" });
    expect(closed.end).toEqual({ kind: "closed" });
    expect(unconfirmed.has("t3") || unconfirmed.has("t4")).toBe(false);
  });
});
