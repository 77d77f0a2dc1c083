import { execFile } from "node:child_process";
import { existsSync } from "node:fs";

/** How one git command ended. */
export interface GitResult {
  /** Exit code (0: it succeeded). */
  code: number;
  stdout: string;
  stderr: string;
}

/** Git could not be run at all (not installed, not on PATH). */
export class GitMissingError extends Error {
  override name = "GitMissingError";
}

/**
 * Runs `git ARGS` in `cwd` and resolves with how it ended, whatever its exit code; rejects
 * only when git could not be started.
 */
export function git(cwd: string, args: string[]): Promise<GitResult> {
  return new Promise((resolve, reject) => {
    execFile("git", args, { cwd, maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      const code = (error as { code?: unknown } | null)?.code;
      if (error && typeof code !== "number") {
        // spawn says ENOENT for a missing working folder too.
        const why =
          code !== "ENOENT"
            ? error.message
            : existsSync(cwd)
              ? "git is not installed (or not on PATH)"
              : `there is no folder ${cwd}`;
        return reject(new GitMissingError(`cannot run git: ${why}`, { cause: error }));
      }
      resolve({ code: error ? (code as number) : 0, stdout, stderr });
    });
  });
}

/** `git ARGS`'s output, trimmed; rejects with git's message when it fails. */
export async function gitOut(cwd: string, args: string[]): Promise<string> {
  const r = await git(cwd, args);
  if (r.code !== 0)
    throw new Error(`git ${args.join(" ")} failed: ${r.stderr.trim() || `exit ${r.code}`}`);
  return r.stdout.trim();
}
