// Test helpers: real repositories in a temporary folder, removed on dispose.
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { silentLogger } from "../../shared/log.ts";
import { Workspaces, type WorkspacesOptions } from "./index.ts";
import type { GitWorkspaceRequest } from "./types.ts";

/** The environment of the tests' own git commands: no user config, a fixed identity. */
export const GIT_ENV: NodeJS.ProcessEnv = {
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GIT_"))),
  GIT_CONFIG_NOSYSTEM: "1",
  GIT_CONFIG_GLOBAL: "/dev/null",
  GIT_AUTHOR_NAME: "Test",
  GIT_AUTHOR_EMAIL: "test@example.com",
  GIT_COMMITTER_NAME: "Test",
  GIT_COMMITTER_EMAIL: "test@example.com",
  LC_ALL: "C",
};

/** Runs git in `cwd` and returns its trimmed stdout. */
export function git(cwd: string, ...args: string[]): string {
  return execFileSync("git", args, {
    cwd,
    env: GIT_ENV,
    encoding: "utf8",
    maxBuffer: 1 << 28,
    stdio: ["ignore", "pipe", "pipe"],
  }).trim();
}

export const AUTHOR = { name: "Conductor", email: "conductor@example.com" };

/** A temporary folder with source repositories and Workspaces data folders in it. */
export class TestRepos implements AsyncDisposable {
  readonly root = mkdtempSync(path.join(tmpdir(), "conductor-ws-"));
  private n = 0;

  /** A new folder path (not created) in the temporary folder. */
  path(name: string): string {
    return path.join(this.root, `${name}-${++this.n}`);
  }

  /** A folder made now. */
  dir(name: string): string {
    const d = this.path(name);
    mkdirSync(d, { recursive: true });
    return d;
  }

  /** A repository with one commit on `main` holding `files` (path → content). */
  source(files: Record<string, string | Buffer>, opts: { bare?: boolean } = {}): string {
    const work = this.dir("src");
    git(work, "init", "-q", "-b", "main");
    write(work, files);
    git(work, "add", "-A");
    git(work, "commit", "-q", "-m", "initial");
    if (!opts.bare) return work;
    const bare = this.path("bare") + ".git";
    git(this.root, "clone", "-q", "--bare", work, bare);
    return bare;
  }

  /** A Workspaces on a data folder of its own (or the given one). */
  workspaces(o: Partial<WorkspacesOptions> = {}): Workspaces {
    return new Workspaces({ dataDir: this.path("data"), author: AUTHOR, log: silentLogger, ...o });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** Writes files (path → content) under `dir`, making folders as needed. */
export function write(dir: string, files: Record<string, string | Buffer>): void {
  for (const [name, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    writeFileSync(path.join(dir, name), content);
  }
}

/** A request for `taskId` of `repository` with defaults. */
export function request(
  repository: string,
  taskId: string,
  more: Partial<GitWorkspaceRequest> = {},
): GitWorkspaceRequest {
  return {
    taskId,
    attempt: 1,
    agentId: "agent-1",
    repository,
    ref: "",
    branch: "",
    push: false,
    ...more,
  };
}

/**
 * Everything a repository is, to compare before and after: its refs, fsck, status (when
 * not bare) and a digest of every byte, link and mode under its folder.
 */
export function fingerprint(repo: string): string {
  const bare = git(repo, "rev-parse", "--is-bare-repository") === "true";
  return [
    git(repo, "for-each-ref"),
    git(repo, "fsck", "--full", "--no-dangling"),
    bare ? "" : git(repo, "status", "--porcelain", "--ignored"),
    digest(repo),
  ].join("\n--\n");
}

function digest(dir: string): string {
  const h = createHash("sha256");
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = path.join(d, name);
      const st = lstatSync(p);
      h.update(`${path.relative(dir, p)}\0${st.mode}\0`);
      if (st.isSymbolicLink()) h.update(readlinkSync(p));
      else if (st.isDirectory()) walk(p);
      else h.update(readFileSync(p));
    }
  };
  walk(dir);
  return h.digest("hex");
}

/** The files of a commit: path → mode, type and object id (`git ls-tree -r`). */
export function treeOf(repo: string, commit: string): string[] {
  return git(repo, "ls-tree", "-r", "--full-tree", commit).split("\n").filter(Boolean);
}

/** A TCP port on 127.0.0.1 that nothing listens on (just now). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A `git daemon` serving (and accepting pushes to) the repositories under `base` on loopback. */
export interface Daemon extends AsyncDisposable {
  /** `git://127.0.0.1:<port>` */
  url: string;
}

/** Starts `git daemon` on a free loopback port; ready once it says so ("Ready to rumble"). */
export async function startDaemon(base: string): Promise<Daemon> {
  const port = await freePort();
  const child = spawn(
    "git",
    [
      "daemon",
      "--verbose",
      "--export-all",
      "--enable=receive-pack",
      "--reuseaddr",
      `--base-path=${base}`,
      "--listen=127.0.0.1",
      `--port=${port}`,
      base,
    ],
    { env: GIT_ENV, stdio: ["ignore", "ignore", "pipe"] },
  );
  const exited = new Promise<void>((resolve) => child.once("close", () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let said = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d: string) => {
      said += d;
      if (said.includes("Ready to rumble")) resolve();
    });
    child.once("close", () => reject(new Error(`git daemon exited: ${said}`)));
  });
  return {
    url: `git://127.0.0.1:${port}`,
    async [Symbol.asyncDispose]() {
      child.kill("SIGTERM");
      await exited;
    },
  };
}
