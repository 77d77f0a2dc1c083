// Git repositories for tests of tasks on repositories: made, compared and driven by real git
// and the real `conductor` binary.
import { execFile, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { ROOT } from "./harness.ts";

const CLI = path.join(ROOT, "bin", "conductor.js");

/** Runs git in `cwd`; its stdout. */
export function git(cwd: string, ...args: string[]): string {
  return execFileSync("git", args, {
    cwd,
    encoding: "utf8",
    env: { ...process.env, GIT_CONFIG_NOSYSTEM: "1", HOME: cwd },
  });
}

/** A repository at `dir` on branch main with a.txt, old.txt, gone.txt and a .gitignore. */
export function makeRepository(dir: string): string {
  mkdirSync(dir, { recursive: true });
  git(dir, "init", "-q", "-b", "main");
  git(dir, "config", "user.name", "Repo Owner");
  git(dir, "config", "user.email", "owner@example.com");
  writeFileSync(path.join(dir, "a.txt"), "original a\n");
  writeFileSync(path.join(dir, "old.txt"), "a file that will be renamed\nwith two lines\n");
  writeFileSync(path.join(dir, "gone.txt"), "a file that will be deleted\n");
  writeFileSync(path.join(dir, ".gitignore"), "*.log\n");
  git(dir, "add", "-A");
  git(dir, "commit", "-q", "-m", "initial");
  return git(dir, "rev-parse", "HEAD").trim();
}

/** Everything of a repository a task must leave as it was: refs, objects, working tree. */
export function fingerprint(dir: string): string {
  const h = createHash("sha256");
  h.update(git(dir, "for-each-ref", "--format=%(refname) %(objectname)"));
  h.update(git(dir, "rev-parse", "HEAD"));
  h.update(git(dir, "status", "--porcelain=v1", "--ignored", "--untracked-files=all"));
  h.update(git(dir, "fsck", "--full", "--no-progress", "--no-dangling"));
  h.update(git(dir, "count-objects", "-v"));
  for (const f of readdirSync(dir).sort()) {
    if (f !== ".git") h.update(`${f}:${readFileSync(path.join(dir, f)).toString("hex")}`);
  }
  return h.digest("hex");
}

/** Runs the real `conductor` binary; its exit code and output. */
export function conductor(
  args: string[],
  cwd: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { cwd, env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" }, maxBuffer: 256 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** The node's cached clone of `source` (the one whose origin it is). */
export function cacheOf(dataDir: string, source: string): string {
  const repos = path.join(dataDir, "repos");
  for (const name of readdirSync(repos)) {
    const dir = path.join(repos, name);
    try {
      if (git(dir, "config", "remote.origin.url").trim() === source) return dir;
    } catch {
      // not a clone with an origin
    }
  }
  throw new Error(`no cached clone of ${source} in ${repos}`);
}
