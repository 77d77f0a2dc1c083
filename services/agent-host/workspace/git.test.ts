import { Code } from "@connectrpc/connect";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../shared/log.ts";
import { Git, GitFailure, isLockContention, lastLine } from "./git.ts";
import { GIT_ENV, git, TestRepos } from "./test-repos.ts";

/** What git says on stderr when `args` fail in `cwd`. */
function stderrOf(cwd: string, ...args: string[]): string {
  try {
    execFileSync("git", args, { cwd, env: GIT_ENV, stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    return String((e as { stderr: Buffer }).stderr);
  }
  throw new Error("git did not fail");
}

describe("Git", () => {
  it("tells lock contention (worth a retry) from a ref that moved (not)", async () => {
    await using t = new TestRepos();
    const src = t.source({ "a.txt": "a\n" });
    const head = git(src, "rev-parse", "HEAD");
    writeFileSync(path.join(src, ".git", "refs", "heads", "x.lock"), "");
    const locked = stderrOf(src, "update-ref", "refs/heads/x", head);
    expect(isLockContention(locked)).toBe(true);
    const moved = stderrOf(src, "update-ref", "refs/heads/main", head, "1".repeat(40));
    expect(isLockContention(moved)).toBe(false);
    expect(lastLine(moved)).toMatch(
      /^fatal: .*cannot lock ref 'refs\/heads\/main': is at .* but expected/,
    );
  });

  it("stops a git command (and what it started) at the timeout, or when the signal aborts", async () => {
    await using t = new TestRepos();
    // The shell git starts holds git's stdout: git's end is seen only once the shell is gone too.
    const slow = ["-c", "alias.slow=!sleep 30", "slow"];
    let t0 = performance.now();
    const e = await new Git(200, silentLogger)
      .run(slow, { gitDir: t.root })
      .catch((x: unknown) => x);
    expect(e).toMatchObject({
      code: Code.Unavailable,
      message: expect.stringMatching(/git slow took longer than 200 ms and was stopped/) as string,
    });
    expect(performance.now() - t0).toBeLessThan(10_000);

    const ac = new AbortController();
    t0 = performance.now();
    const running = new Git(60_000, silentLogger).run(slow, { gitDir: t.root, signal: ac.signal });
    ac.abort(new Error("cancelled"));
    await expect(running).rejects.toThrow("cancelled");
    expect(performance.now() - t0).toBeLessThan(10_000);
  });

  it("reports a failure with git's reason and does not inherit GIT_* settings", async () => {
    await using t = new TestRepos();
    const g = new Git(60_000, silentLogger);
    const e = await g
      .run(["rev-parse", "--verify", "nope"], { gitDir: t.root })
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(GitFailure);
    expect((e as GitFailure).code).toBe(128);
    const env = await g.text(["var", "GIT_AUTHOR_IDENT"], {
      gitDir: t.root,
      env: { GIT_AUTHOR_NAME: "N", GIT_AUTHOR_EMAIL: "e@x" },
    });
    expect(env).toMatch(/^N <e@x> \d+/);
  });
});
