import {
  chmodSync,
  closeSync,
  fchmodSync,
  fchownSync,
  lchownSync,
  mkdirSync,
  openSync,
  rmSync,
  writeFileSync,
} from "node:fs";

/** The uid:gid an agent runs as, when the service (root) runs it as another user. */
export interface AgentOwner {
  uid: number;
  gid: number;
}

/**
 * Makes an agent's `run` folder anew: owned by this service's user, mode 0751, its group the
 * agent's, so the agent can read what is in it and connect to its sockets but can neither
 * replace nor add anything; others (a container's own user, which holds the lifeline) may
 * pass through to a socket made theirs, but not list or read. Whatever was there (links an agent planted included) is removed
 * first, without following links.
 */
export function freshRunDir(dir: string, owner: AgentOwner | undefined): void {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o751 });
  lchownSync(dir, process.getuid?.() ?? 0, owner?.gid ?? process.getgid?.() ?? 0);
  chmodSync(dir, 0o751); // made just now, by us: not a link
}

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

/**
 * Makes a socket this service listens on reachable by the agent's user alone (and this
 * service): mode 0600, owned by the agent. Call on a socket in a folder from freshRunDir.
 */
export function socketForAgent(socketPath: string, owner: AgentOwner | undefined): void {
  if (owner) lchownSync(socketPath, owner.uid, owner.gid);
  chmodSync(socketPath, 0o600);
}
