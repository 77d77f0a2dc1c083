import { readdirSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { fingerprint, git, request, TestRepos, write } from "./test-repos.ts";

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
});
