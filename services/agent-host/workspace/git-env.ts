/** Where and how one git command runs. */
export interface GitCall {
  /** GIT_DIR: always given, never discovered (a worktree's `.git` is the agent's). */
  gitDir: string;
  /** GIT_WORK_TREE, for commands on a worktree. */
  workTree?: string;
  /** Extra environment (author and committer). */
  env?: Record<string, string>;
  /** Written to git's stdin. */
  input?: string | Buffer;
  /** Talks to the source: the operator's global git config (credentials, ssh, proxies) applies. */
  network?: boolean;
  /** Exit codes that are not failures (default [0]). */
  ok?: number[];
  signal?: AbortSignal | undefined;
}

/** Settings that keep host-side git from running anything a repository or worktree names. */
export const SAFE_CONFIG = [
  "core.hooksPath=/dev/null",
  "core.fsmonitor=false",
  "core.untrackedCache=false",
  "core.attributesFile=/dev/null",
  "core.excludesFile=/dev/null",
  "core.symlinks=true",
  "core.sparseCheckout=false",
  "submodule.recurse=false",
  "protocol.allow=never",
  "protocol.file.allow=always",
  "protocol.git.allow=always",
  "protocol.ssh.allow=always",
  "protocol.https.allow=always",
].flatMap((kv) => ["-c", kv]);

/** Transport settings of the operator kept for commands that reach the source. */
const KEPT_ENV = new Set(["GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSH_VARIANT"]);

/**
 * The environment of a git command: this process's, as any child inherits it, without its
 * GIT_* settings (but for ssh's, when reaching the source), and with GIT_DIR (always
 * explicit), no system config, no global config unless `network`, only the file, git, ssh and
 * https transports, no prompts, no replace refs, and messages in English (they are matched).
 */
export function gitEnv(call: GitCall): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("GIT_") || (call.network && KEPT_ENV.has(k))) env[k] = v;
  }
  Object.assign(env, {
    GIT_DIR: call.gitDir,
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_ATTR_NOSYSTEM: "1",
    GIT_ALLOW_PROTOCOL: "file:git:ssh:https",
    GIT_TERMINAL_PROMPT: "0",
    GIT_NO_REPLACE_OBJECTS: "1",
    LC_ALL: "C",
    LANGUAGE: "",
    ...(call.network ? {} : { GIT_CONFIG_GLOBAL: "/dev/null" }),
    ...(call.workTree ? { GIT_WORK_TREE: call.workTree } : {}),
    ...call.env,
  });
  return env;
}

/**
 * The environment of a git command that finds a repository itself (from its working
 * directory, no higher than `ceiling`): gitEnv's without GIT_DIR, global config or network.
 */
export function discoveryEnv(ceiling: string): NodeJS.ProcessEnv {
  const env = gitEnv({ gitDir: "" });
  delete env["GIT_DIR"];
  env["GIT_CONFIG_GLOBAL"] = "/dev/null";
  env["GIT_CEILING_DIRECTORIES"] = ceiling;
  return env;
}
