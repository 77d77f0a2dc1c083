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
  statSync,
  utimesSync,
  writeSync,
} from "node:fs";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdir, opendir, readdir, rename } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { removeTree, type AgentOwner } from "../shared/agent-files.ts";

/** A Claude session id as the CLI makes them, or a task id: a UUID, never anything else in a path. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** The most of a session transcript kept for a retry (one over it is not kept). */
const MAX_SESSION_BYTES = 64 * 1024 * 1024;
/** Most transcripts an agent's store keeps (the last kept), and most bytes of them together. */
export const MAX_KEPT_SESSIONS = 64;
export const MAX_KEPT_SESSION_BYTES = 256 * 1024 * 1024;
/** Most entries of a folder removed at once while emptying it. */
const RM_CONCURRENCY = 32;

/**
 * The folder the CLI keeps the sessions of a working directory in, under its config folder:
 * `projects/<cwd with every character but letters and digits made "-">` (observed with CLI
 * 2.1.332: `/tmp/x.y/ws` → `-tmp-x-y-ws`).
 */
export function projectDir(configDir: string, cwd: string): string {
  return path.join(configDir, "projects", cwd.replace(/[^A-Za-z0-9]/g, "-"));
}

/**
 * Where an agent's session transcripts are kept between its runs: `<agent>/sessions/`, a folder
 * of this service's own that no sandbox is given (a run sees its config folder, emptied after
 * each run: resetConfig). Each is kept under its task's id, `<task id>.jsonl`, a name the
 * AgentHost chose: no run can put a transcript in the place of another task's.
 */
export function sessionStore(agentDir: string): string {
  return path.join(agentDir, "sessions");
}

/**
 * Keeps the transcript of a run's own session (`sessionId`, the one its result reported) for a
 * retry of its task: `projects/<project of cwd>/<sessionId>.jsonl` in `configDir`, a regular file
 * of one link in real folders, of at most MAX_SESSION_BYTES, is moved to `store` as
 * `<taskId>.jsonl` and dated now. It is the task's last: the copies earlier attempts left in
 * any agent's store under `agentsDir` go. When there is none to keep, they stay only if the run
 * went on with the session they hold (`resumed`, the session it was given to resume): no other
 * session's transcript is resumed in its name. The store then keeps the last MAX_KEPT_SESSIONS
 * kept, at most MAX_KEPT_SESSION_BYTES together. Called after the run, while no process of the
 * agent runs. Returns whether it was kept.
 */
export function keepSession(o: {
  configDir: string;
  cwd: string;
  sessionId: string;
  taskId: string;
  store: string;
  agentsDir: string;
  resumed?: string | undefined;
}): boolean {
  if (!UUID.test(o.taskId)) return false;
  const kept = path.join(o.store, `${o.taskId}.jsonl`);
  const ours = transcriptOf(o);
  if (ours) {
    mkdirSync(o.store, { recursive: true, mode: 0o700 });
    renameSync(ours, kept);
    // Dated by the AgentHost, each later than the last: the store's order is not the agent's.
    lastKept = Math.max(Date.now(), lastKept + 1);
    utimesSync(kept, lastKept / 1000, lastKept / 1000);
  }
  if (ours || o.sessionId !== o.resumed)
    for (const copy of copiesOf(o.agentsDir, o.taskId))
      if (copy !== kept || !ours) rmSync(copy, { force: true });
  if (ours) pruneStore(o.store);
  return ours !== undefined;
}

/**
 * The run's transcript in `configDir` for `cwd`, when it may be kept: the session's file, a
 * regular file of one link, at most MAX_SESSION_BYTES, in real folders.
 */
function transcriptOf(o: { configDir: string; cwd: string; sessionId: string }) {
  if (!UUID.test(o.sessionId)) return undefined;
  const projects = path.join(o.configDir, "projects");
  const dir = projectDir(o.configDir, o.cwd);
  if (!isDir(projects) || !isDir(dir)) return undefined;
  const file = path.join(dir, `${o.sessionId}.jsonl`);
  const st = lstatSync(file, { throwIfNoEntry: false });
  return st?.isFile() && st.nlink === 1 && st.size <= MAX_SESSION_BYTES ? file : undefined;
}

/** The copies of task `taskId`'s transcript in the agents' stores under `agentsDir`. */
function copiesOf(agentsDir: string, taskId: string): string[] {
  return safeList(agentsDir)
    .map((agent) => path.join(sessionStore(path.join(agentsDir, agent)), `${taskId}.jsonl`))
    .filter(isFile);
}

/** When keepSession dated the last transcript it kept (ms since the epoch). */
let lastKept = 0;

/** Keeps the last MAX_KEPT_SESSIONS transcripts of a store, at most MAX_KEPT_SESSION_BYTES. */
function pruneStore(store: string): void {
  const files = readdirSync(store).map((name) => {
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

/**
 * Makes the session `sessionId` of task `taskId`'s last attempt resumable by `--resume` in
 * `configDir` for `cwd`: its transcript is taken from whichever agent's store (sessionStore,
 * under `agentsDir`) kept it — the attempt before may have run on another agent, or in another
 * folder — copied there and given to `owner`. The store keeps its copy until the resumed run's
 * is kept in its place (keepSession, on whichever agent): a run that keeps none (its engine lost,
 * its AgentHost killed) leaves the next attempt this one to resume. Returns false when none holds
 * it (the caller starts a new session): ids that are not UUIDs, a transcript not kept or pruned
 * since.
 *
 * The copy is written only into a folder with no link on its way (no process of the agent runs
 * meanwhile), exclusively and without following links.
 */
export function carrySession(
  agentsDir: string,
  taskId: string,
  sessionId: string,
  configDir: string,
  cwd: string,
  owner: AgentOwner | undefined,
): boolean {
  if (!UUID.test(sessionId) || !UUID.test(taskId)) return false;
  // More than one only if an AgentHost died while keeping one: the one kept last is the last.
  const source = copiesOf(agentsDir, taskId).sort(
    (a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs,
  )[0];
  if (!source) return false;
  const destDir = projectDir(configDir, cwd);
  makeDirs(configDir, destDir, owner);
  const from = openSync(source, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = fstatSync(from);
    if (!st.isFile() || st.size > MAX_SESSION_BYTES) return false;
    const to = openSync(
      path.join(destDir, `${sessionId}.jsonl`),
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
 * Empties an agent's CLI config folder (its HOME too), after each run (its transcript kept
 * first: keepSession) and before the next: emptyDir, with the agent's trash beside it. Whatever
 * an earlier run wrote there (`.bashrc`, `.profile`, settings, plugins, `.claude.json`'s
 * per-project permissions, a project's `memory/`, its conversation) would run, widen what a run
 * may do, instruct the model or be read in a later run, with that run's key. Call only while no
 * process of the agent runs.
 */
export async function resetConfig(configDir: string): Promise<void> {
  await emptyDir(configDir, trashOf(path.dirname(configDir)));
}

/** An agent's trash: `<agent>/trash/`, its own, in no sandbox, on the agent folder's file system. */
export function trashOf(agentDir: string): string {
  return path.join(agentDir, "trash");
}

/**
 * Empties `dir` at once, whatever its names (bytes that are not UTF-8 too) and however many,
 * large or deep what is in it: the listing is read a batch at a time, and each entry moved
 * (renamed, RM_CONCURRENCY at a time) into a new folder of `trash`, which `rm -rf` (GNU coreutils', a
 * process of its own: no path is too long for it, and this event loop is never held) removes in
 * the background once it is filled. Entries on another file system are removed in place by
 * `find -delete`, waited for. Rejects with the first failure, or when anything is left in `dir`.
 */
export async function emptyDir(dir: string, trash: string): Promise<void> {
  const id = randomUUID();
  const filling = path.join(trash, `${FILLING}${id}`);
  const [from, to] = [Buffer.from(`${dir}/`), Buffer.from(`${filling}/`)];
  let made = false;
  let elsewhere = false;
  let failure: Error | undefined;
  const move = async (names: Buffer[]) => {
    if (!made) await mkdir(filling, { recursive: true, mode: 0o700 });
    made = true;
    const moved = await Promise.allSettled(
      names.map((name) => rename(Buffer.concat([from, name]), Buffer.concat([to, name]))),
    );
    for (const m of moved) {
      if (m.status === "fulfilled") continue;
      if ((m.reason as NodeJS.ErrnoException).code === "EXDEV") elsewhere = true;
      else failure ??= m.reason as Error;
    }
  };
  try {
    let batch: Buffer[] = [];
    // Names as bytes: Node gives a Dirent's name as a Buffer with this encoding (not in its types).
    for await (const entry of await opendir(dir, { encoding: BYTES, bufferSize: RM_CONCURRENCY })) {
      batch.push(entry.name as unknown as Buffer);
      if (batch.length < RM_CONCURRENCY) continue;
      await move(batch);
      batch = [];
    }
    if (batch.length > 0) await move(batch);
    if (elsewhere) await remove("find", [dir, "-xdev", "-mindepth", "1", "-delete"]);
  } finally {
    // Filled (or failed): only now may a sweep take it.
    if (made) await rename(filling, path.join(trash, id)).catch(() => undefined);
    sweepTrash(trash).catch(() => undefined); // what it cannot remove waits for the next
  }
  if (failure) throw failure;
  const listing = await opendir(dir, { bufferSize: 1 });
  const left = await listing.read();
  await listing.close();
  if (left) throw new Error(`${dir} could not be emptied: ${left.name} (at least) is left in it`);
}

/** The name a trash folder has while emptyDir fills it (a sweep leaves it alone). */
const FILLING = ".filling-";
/** Node's encoding for names as Buffers, which its types for opendir do not list. */
const BYTES = "buffer" as BufferEncoding;

/** The sweep under way for each trash folder, and whether another must follow it. */
const sweeps = new Map<string, { done: Promise<void>; again: boolean }>();

/**
 * Removes every filled folder of `trash` with one `rm -rf` at a time (more comes meanwhile: one
 * more after it). What a sweep cannot remove stays for the next. Resolves when the sweep it
 * joined and any it queued are over.
 */
export function sweepTrash(trash: string): Promise<void> {
  const under = sweeps.get(trash);
  if (under) {
    under.again = true;
    return under.done;
  }
  const sweep = { again: false, done: Promise.resolve() };
  sweep.done = (async () => {
    do {
      sweep.again = false;
      const bins = (await readdir(trash).catch(() => []))
        .filter((b) => !b.startsWith(FILLING))
        .map((b) => path.join(trash, b));
      await removeTree(...bins).catch(() => undefined);
    } while (sweep.again);
    sweeps.delete(trash);
  })();
  sweeps.set(trash, sweep);
  return sweep.done;
}

/** Runs `find`; rejects with what it said (its stderr) when it fails. */
const remove = promisify(execFile);

function isDir(p: string): boolean {
  return lstatSync(p, { throwIfNoEntry: false })?.isDirectory() === true;
}

function isFile(p: string): boolean {
  try {
    return lstatSync(p, { throwIfNoEntry: false })?.isFile() === true;
  } catch {
    return false; // ENOTDIR: a file where a folder was looked for
  }
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
