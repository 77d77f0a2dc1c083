import { readdirSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../shared/log.ts";
import { WorkspaceError } from "./index.ts";
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

  it("shares one failed fetch among the tasks that waited for it", async () => {
    await using t = new TestRepos();
    const lines: string[] = [];
    const ws = t.workspaces({ log: createLogger("debug", {}, (l) => lines.push(l)) });
    const url = `git://127.0.0.1:${await freePort()}/gone.git`;
    const parent = t.dir("wt");
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) =>
        ws.prepare(request(url, `t${i}`), path.join(parent, `${i}`)),
      ),
    );
    for (const r of results) {
      expect(r.status).toBe("rejected");
      const e = (r as PromiseRejectedResult).reason as WorkspaceError;
      expect(e).toBeInstanceOf(WorkspaceError);
      expect(e.message).toMatch(/cannot be reached/);
    }
    const fetches = lines.filter((l) => (JSON.parse(l) as { args?: string }).args === "fetch");
    expect(fetches.length).toBeLessThan(5); // one, plus any that asked after it had begun
    expect(readdirSync(parent)).toEqual([]);
    expect(await ws.recover()).toEqual([]);
  });
});
