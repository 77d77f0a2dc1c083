import {
  closeSync,
  constants,
  fchownSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  realpathSync,
  writeSync,
} from "node:fs";
import { rm } from "node:fs/promises";
import path from "node:path";
import type { AgentOwner } from "../shared/agent-files.ts";

/** A Claude session id as the CLI makes them (a UUID); anything else is never used in a path. */
const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** The most of a session transcript carried to another agent. */
const MAX_SESSION_BYTES = 64 * 1024 * 1024;

/**
 * The folder the CLI keeps the sessions of a working directory in, under its config folder:
 * `projects/<cwd with every character but letters and digits made "-">` (observed with CLI
 * 2.1.332: `/tmp/x.y/ws` → `-tmp-x-y-ws`).
 */
export function projectDir(configDir: string, cwd: string): string {
  return path.join(configDir, "projects", cwd.replace(/[^A-Za-z0-9]/g, "-"));
}

/**
 * Makes session `sessionId` resumable by `--resume` in `configDir` for `cwd`: when its
 * transcript is not there yet, it is copied from whichever agent's config folder under
 * `agentsDir` holds it (the attempt before may have run on another agent, or in another
 * folder). Returns false when no transcript is found (the caller starts a new session).
 *
 * The transcripts are the agents' own files: the id must be a UUID; a source that is a link
 * or not a regular file, or whose real path leaves its agent's folder, is not read; the copy
 * is written only into a folder with no link on its way (no process of the agent runs
 * meanwhile), exclusively and without following links, and given to `owner`.
 */
export function carrySession(
  agentsDir: string,
  sessionId: string,
  configDir: string,
  cwd: string,
  owner: AgentOwner | undefined,
): boolean {
  if (!SESSION_ID.test(sessionId)) return false;
  const name = `${sessionId}.jsonl`;
  const destDir = projectDir(configDir, cwd);
  const dest = path.join(destDir, name);
  if (isFile(dest)) return true;
  const source = findTranscript(agentsDir, name);
  if (!source) return false;
  makeDirs(configDir, destDir, owner);
  const from = openSync(source, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = fstatSync(from);
    if (!st.isFile() || st.size > MAX_SESSION_BYTES) return false;
    const to = openSync(
      dest,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    try {
      const buf = Buffer.alloc(1024 * 1024);
      let copied = 0;
      for (
        let n = readSync(from, buf);
        n > 0 && copied < MAX_SESSION_BYTES;
        n = readSync(from, buf)
      ) {
        writeSync(to, buf, 0, n);
        copied += n;
      }
      if (owner) fchownSync(to, owner.uid, owner.gid);
    } finally {
      closeSync(to);
    }
  } finally {
    closeSync(from);
  }
  return true;
}

/** `agents/<agent>/claude-config/projects/<project>/<name>`, a regular file inside its agent's folder. */
function findTranscript(agentsDir: string, name: string): string | undefined {
  for (const agent of safeList(agentsDir)) {
    const projects = path.join(agentsDir, agent, "claude-config", "projects");
    for (const project of safeList(projects)) {
      const file = path.join(projects, project, name);
      if (!isFile(file)) continue;
      try {
        if (realpathSync(file) === file) return file;
      } catch {
        // gone meanwhile
      }
    }
  }
  return undefined;
}

/** Creates `dir` (under `root`, which exists) one level at a time, refusing any link on the way. */
function makeDirs(root: string, dir: string, owner: AgentOwner | undefined): void {
  let at = root;
  for (const part of path.relative(root, dir).split(path.sep)) {
    at = path.join(at, part);
    try {
      mkdirSync(at, { mode: 0o700 });
      if (owner) {
        const fd = openSync(at, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
        try {
          fchownSync(fd, owner.uid, owner.gid);
        } finally {
          closeSync(fd);
        }
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    if (!lstatSync(at).isDirectory()) throw new Error(`${at} is not a folder (a link?)`);
  }
}

/**
 * Leaves in an agent's CLI config folder (its HOME too) only its sessions, for `--resume`:
 * `projects/<project>/<session>.jsonl`, regular files in real folders. Whatever else an earlier
 * run wrote there (`.bashrc`, `.profile`, settings, plugins, `.claude.json`'s per-project
 * permissions, a project's `memory/`) would run, widen what a run may do, or instruct the
 * model, in the next run, with that run's key. Removed without blocking the event loop (a run
 * may leave a million files).
 */
export async function resetConfig(configDir: string): Promise<void> {
  const projects = path.join(configDir, "projects");
  const gone: string[] = readdirSync(configDir)
    .filter((e) => e !== "projects" || !isDir(projects))
    .map((e) => path.join(configDir, e));
  if (isDir(projects)) {
    for (const project of readdirSync(projects)) {
      const dir = path.join(projects, project);
      if (!isDir(dir)) {
        gone.push(dir);
        continue;
      }
      for (const entry of readdirSync(dir)) {
        const p = path.join(dir, entry);
        const session = entry.endsWith(".jsonl") && isFile(p);
        if (!session) gone.push(p);
      }
    }
  }
  await Promise.all(gone.map((p) => rm(p, { recursive: true, force: true })));
}

function isDir(p: string): boolean {
  return lstatSync(p, { throwIfNoEntry: false })?.isDirectory() === true;
}

function isFile(p: string): boolean {
  try {
    return lstatSync(p).isFile();
  } catch {
    return false;
  }
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
