import { readdirSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createLogger, silentLogger } from "../../shared/log.ts";
import { Cache } from "./cache.ts";
import { Git } from "./git.ts";
import { WorkspaceError } from "./index.ts";
import { parseSource } from "./source.ts";
import { fingerprint, freePort, git, request, TestRepos, write } from "./test-repos.ts";

describe("Workspaces under concurrency", () => {
  it("prepares and finishes 20 tasks of one repository at once, each on its own branch", async () => {
    await using t = new TestRepos();
    const src = t.source({ README: "shared\n", "lib/a.txt": "a\n" });
    const before = fingerprint(src);
    const ws = t.workspaces();
    const parent = t.dir("wt");
    const ids = Array.from({ length: 20 }, (_, i) => `task-${String(i).padStart(2, "0")}`);
    // The cache does not exist yet: the first prepare makes it while the others wait.
    const changes = await Promise.all(
      ids.map(async (id) => {
        const p = await ws.prepare(request(src, id), path.join(parent, id));
        write(p.worktree, { [`out/${id}.txt`]: `${id}\n` });
        return { p, change: await ws.finish(p, { sessionId: `s-${id}`, outcome: "succeeded" }) };
      }),
    );
    const cache = changes[0]!.p.cache;
    expect(git(cache, "for-each-ref", "--format=%(refname)", "refs/heads/").split("\n")).toEqual(
      ids.map((id) => `refs/heads/conductor/${id}`),
    );
    for (const [i, { change }] of changes.entries()) {
      const id = ids[i]!;
      expect(change.committed).toBe(true);
      expect(change.files.map((f) => `${f.status} ${f.path}`)).toEqual([`added out/${id}.txt`]);
      expect(git(cache, "diff", "--name-only", change.baseCommit, `conductor/${id}`)).toBe(
        `out/${id}.txt`,
      );
    }
    expect(readdirSync(parent)).toEqual([]);
    expect(readdirSync(path.join(cache, "worktrees"))).toEqual([]);
    expect(fingerprint(src)).toBe(before);
  });

  it("has tasks that ask for a fetch while one runs share the next one, and its failure", async () => {
    await using t = new TestRepos();
    const lines: string[] = [];
    const git = new Git(
      60_000,
      createLogger("debug", {}, (l) => lines.push(l)),
    );
    const fetches = () =>
      lines.filter((l) => (JSON.parse(l) as { args?: string }).args === "fetch").length;
    const reposDir = t.dir("repos");
    const src = t.source({ "a.txt": "a\n" });
    const cache = new Cache(parseSource(src), reposDir, git, silentLogger);
    await Promise.all(Array.from({ length: 20 }, () => cache.refresh()));
    expect(fetches()).toBe(1); // the clone's own
    await Promise.all(Array.from({ length: 20 }, () => cache.refresh()));
    expect(fetches()).toBe(2);

    const url = `git://127.0.0.1:${await freePort()}/gone.git`;
    const gone = new Cache(parseSource(url), reposDir, git, silentLogger);
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => gone.refresh()));
    expect(fetches()).toBe(3);
    for (const r of results) {
      expect(r.status).toBe("rejected");
      const e = (r as PromiseRejectedResult).reason as WorkspaceError;
      expect(e).toBeInstanceOf(WorkspaceError);
      expect(e.message).toMatch(/cannot be reached/);
    }
    await expect(gone.refresh()).rejects.toThrow(/cannot be reached/); // a later one tries again
    expect(fetches()).toBe(4);
  });
});
