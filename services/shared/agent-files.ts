import { execFile, execFileSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  fstatSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { lstat } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

/** The uid:gid an agent runs as, when the service (root) runs it as another user. */
export interface AgentOwner {
  uid: number;
  gid: number;
}

/**
 * Makes an agent's `run` folder anew: owned by this service's user, mode 0751, its group the
 * agent's, so the agent can read what is in it and connect to its sockets but can neither
 * replace nor add anything; others may pass through to a socket made theirs, but not list or
 * read. Whatever was in it (links an agent planted included) is removed first, without
 * following links. A folder that is already ours is emptied rather than replaced: a container
 * re-adopted after a restart bind-mounts this very folder, and sees what is made in it anew.
 */
export function freshRunDir(dir: string, owner: AgentOwner | undefined): void {
  const me = process.getuid?.() ?? 0;
  let ours = false;
  try {
    const st = lstatSync(dir);
    ours = st.isDirectory() && st.uid === me;
  } catch {
    // not there yet
  }
  if (ours) {
    for (const name of readdirSync(dir))
      rmSync(path.join(dir, name), { recursive: true, force: true });
  } else {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true, mode: 0o751 });
  }
  lchownSync(dir, me, owner?.gid ?? process.getgid?.() ?? 0);
  chmodSync(dir, 0o751); // a folder of ours (lstat above, or made just now): not a link
}

/**
 * Gives an agent's own folder (workspace, CLI config) to `owner`. When it belonged to another
 * user (runtime.user changed), everything in it too: coreutils `chown -R -P`, which follows no
 * link (a link itself is given) and, a process of its own, is stopped by no depth (Node's
 * full paths fail past PATH_MAX), with nothing of the agent running.
 */
export function ownTree(dir: string, owner: AgentOwner): void {
  const st = lstatSync(dir);
  if (st.isDirectory() && st.uid !== owner.uid)
    execFileSync("chown", ["-R", "-P", `${owner.uid}:${owner.gid}`, "--", dir], { stdio: "pipe" });
  lchownSync(dir, owner.uid, owner.gid);
}

/**
 * Removes each of `trees` and everything in it, however deep or wide: one `rm -rf`, a process of
 * its own, so no path is too long for it (Node's fs.rm fails with ENAMETOOLONG past PATH_MAX)
 * and this event loop is not held; it follows no link. Only POSIX options, so BusyBox's rm
 * serves too (GNU's removes trees of any depth; BusyBox's stops at PATH_MAX, as fs.rm did).
 * Where a folder the agent closed (mode 000) stops it and this service is not root, the folders
 * are opened to us first (`chmod -R u+rwx`, which follows no link; each tree checked to be a
 * folder). Rejects with what rm said, its first line, when something is left.
 */
export async function removeTree(...trees: string[]): Promise<void> {
  if (trees.length === 0) return;
  const rmTrees = () => exec("rm", ["-rf", "--", ...trees]);
  try {
    await rmTrees();
  } catch {
    const dirs = [];
    for (const t of trees) if ((await lstat(t).catch(() => undefined))?.isDirectory()) dirs.push(t);
    if (dirs.length > 0) await exec("chmod", ["-R", "u+rwx", "--", ...dirs]).catch(() => undefined);
    await rmTrees().catch((e: unknown) => {
      const said = String((e as { stderr?: unknown }).stderr ?? e).split("\n")[0]!;
      throw new Error(
        `${trees.join(", ").slice(0, 300)} could not be removed: ${said.slice(0, 300)}`,
        {
          cause: e,
        },
      );
    });
  }
}

/** Runs a coreutils command; rejects (its stderr on the error) when it fails. */
const exec = promisify(execFile);

/**
 * Writes a file the agent may read and not change into a folder made by freshRunDir: created
 * exclusively (an existing file or link is an error, never written through), owned by this
 * service's user with the agent's group, mode 0640 (0644 for `public`).
 */
export function writeForAgent(
  file: string,
  content: string | Buffer,
  owner: AgentOwner | undefined,
  mode = 0o640,
): void {
  const fd = openSync(file, "wx", mode);
  try {
    writeFileSync(fd, content);
    fchownSync(fd, process.getuid?.() ?? 0, owner?.gid ?? process.getgid?.() ?? 0);
    fchmodSync(fd, mode);
  } finally {
    closeSync(fd);
  }
}

/** Linux's O_PATH (not in fs.constants): names a file without opening what it is. */
const O_PATH = 0o10000000;

/**
 * Makes a socket this service listens on reachable by the agent's user alone (and this
 * service): mode 0600 (or `mode`, for the owner's group too), owned by `owner` (left to this service's user without one). Never
 * follows a link: the name is opened O_PATH|O_NOFOLLOW, checked to be a socket and changed
 * through /proc/self/fd, so a link planted where the socket was cannot turn this into a chmod
 * or chown of a host file. Until then the socket has the umask's mode (0700 under the
 * services' 077).
 */
export function socketForAgent(
  socketPath: string,
  owner: AgentOwner | undefined,
  mode = 0o600,
): void {
  const fd = openSync(socketPath, O_PATH | constants.O_NOFOLLOW);
  try {
    if (!fstatSync(fd).isSocket()) throw new Error(`${socketPath} was replaced while starting`);
    chmodSync(`/proc/self/fd/${fd}`, mode);
    if (owner) chownSync(`/proc/self/fd/${fd}`, owner.uid, owner.gid);
  } finally {
    closeSync(fd);
  }
}
