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
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import { rm } from "node:fs/promises";
import path from "node:path";
import type { AgentOwner } from "../shared/agent-files.ts";

/** A Claude session id as the CLI makes them (a UUID); anything else is never used in a path. */
const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** A session's transcript file, as the CLI names it in its project folder. */
const SESSION_FILE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jsonl$/;
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

/** Most session transcripts an agent's store keeps (the newest), and most bytes of them. */
export const MAX_KEPT_SESSIONS = 64;
export const MAX_KEPT_SESSION_BYTES = 256 * 1024 * 1024;

/**
 * Where an agent's session transcripts are kept between its runs: `<agent>/sessions/`, a folder
 * of this service's own that no sandbox is given (its runs see only their config folder, which
 * is emptied after each: resetConfig). A later task on the agent so cannot read an earlier
 * one's conversation.
 */
export function sessionStore(agentDir: string): string {
  return path.join(agentDir, "sessions");
}

/**
 * Makes session `sessionId` resumable by `--resume` in `configDir` for `cwd`: its transcript is
 * copied there from whichever agent's store (sessionStore, under `agentsDir`) holds it — the
 * attempt before may have run on another agent, or in another folder. Returns false when none
 * holds it (the caller starts a new session): an id that is not a UUID, or a transcript pruned
 * from its store (resetConfig).
 *
 * The copy is written only into a folder with no link on its way (no process of the agent runs
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
  const source = safeList(agentsDir)
    .map((agent) => path.join(sessionStore(path.join(agentsDir, agent)), name))
    .find(isFile);
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
 * Empties an agent's CLI config folder (its HOME too), keeping its session transcripts in the
 * agent's store (sessionStore, `store`) for a retry's `--resume`: `projects/<project>/<session
 * id>.jsonl`, regular files of one link in real folders, of at most MAX_SESSION_BYTES each. The
 * store then keeps the newest MAX_KEPT_SESSIONS, at most MAX_KEPT_SESSION_BYTES together.
 * Whatever else an earlier run wrote there (`.bashrc`, `.profile`, settings, plugins,
 * `.claude.json`'s per-project permissions, a project's `memory/`, an earlier task's
 * transcript) would run, widen what a run may do, instruct the model or be read in the next
 * run, with that run's key. Called after each run and before the next, while no process of the
 * agent runs. Removed without blocking the event loop (a run may leave a million files).
 */
export async function resetConfig(configDir: string, store: string): Promise<void> {
  const projects = path.join(configDir, "projects");
  for (const project of isDir(projects) ? readdirSync(projects) : []) {
    const dir = path.join(projects, project);
    for (const entry of isDir(dir) ? readdirSync(dir) : []) {
      const file = path.join(dir, entry);
      const st = lstatSync(file, { throwIfNoEntry: false });
      if (!SESSION_FILE.test(entry) || !st?.isFile() || st.nlink !== 1) continue;
      if (st.size > MAX_SESSION_BYTES) continue;
      try {
        mkdirSync(store, { recursive: true, mode: 0o700 });
        renameSync(file, path.join(store, entry));
      } catch {
        // another file system (EXDEV), say: removed below with the rest, not resumable
      }
    }
  }
  const gone = readdirSync(configDir).map((e) => path.join(configDir, e));
  await Promise.all(gone.map((p) => rm(p, { recursive: true, force: true })));
  pruneStore(store);
}

/** Keeps the newest MAX_KEPT_SESSIONS transcripts of a store, at most MAX_KEPT_SESSION_BYTES. */
function pruneStore(store: string): void {
  const files = safeList(store).map((name) => {
    const file = path.join(store, name);
    return { file, st: lstatSync(file) };
  });
  files.sort((a, b) => b.st.mtimeMs - a.st.mtimeMs);
  let bytes = 0;
  files.forEach(({ file, st }, i) => {
    bytes += st.size;
    if (i >= MAX_KEPT_SESSIONS || bytes > MAX_KEPT_SESSION_BYTES) rmSync(file, { force: true });
  });
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
