import { createHash } from "node:crypto";
import { realpathSync } from "node:fs";
import net from "node:net";
import path from "node:path";

/**
 * Why a socket in Linux's abstract namespace, rather than a lock file: Node has no flock, and
 * an O_EXCL file with a pid in it goes stale on kill -9 (a later start must guess whether that
 * pid, perhaps reused, is still the holder, and two starts can both remove a stale file and
 * both win). Binding an abstract socket name is atomic (EADDRINUSE for the second), and the
 * kernel releases the name the moment its holder dies, however it dies: nothing to clean up,
 * nothing to go stale. The holder also answers who it is, so the refusal names it.
 * Limits: the name is per network namespace (a service started in another one is not seen),
 * and any local user could bind a name first — a start is then refused, never run twice.
 */

/** A lock held by this process; release() lets another instance start. */
export interface ServiceLock {
  /** The data folder it guards (resolved). */
  dataDir: string;
  release(): Promise<void>;
}

/** Who holds a lock, as the holder tells it. */
export interface LockHolder {
  pid: number;
  service: string;
  dataDir: string;
  command: string;
  since: string;
}

/** Another instance of the service runs on the same data folder. */
export class ServiceLockedError extends Error {
  override name = "ServiceLockedError";
  readonly holder: LockHolder | undefined;
  constructor(message: string, holder: LockHolder | undefined) {
    super(message);
    this.holder = holder;
  }
}

/** The folder's real path, through the nearest part that exists (it may not be made yet). */
export function resolvedDataDir(dir: string): string {
  const abs = path.resolve(dir);
  let head = abs;
  const rest: string[] = [];
  for (;;) {
    try {
      return path.join(realpathSync(head), ...rest);
    } catch {
      const parent = path.dirname(head);
      if (parent === head) return abs;
      rest.unshift(path.basename(head));
      head = parent;
    }
  }
}

/** The abstract socket name of `service`'s lock on `dataDir`. */
export function lockName(service: string, dataDir: string): string {
  const digest = createHash("sha256").update(resolvedDataDir(dataDir)).digest("hex");
  return `\0conductor/${service}/${digest}`;
}

/**
 * Takes the exclusive lock of `service` (orchestrator, agent-host, broker) on `dataDir`, before
 * the service touches anything there; throws ServiceLockedError naming the running instance
 * when another holds it.
 */
export async function lockService(service: string, dataDir: string): Promise<ServiceLock> {
  const resolved = resolvedDataDir(dataDir);
  const me: LockHolder = {
    pid: process.pid,
    service,
    dataDir: resolved,
    command: process.argv.slice(1).join(" "),
    since: new Date().toISOString(),
  };
  const server = net.createServer((s) => {
    s.on("error", () => s.destroy());
    s.end(JSON.stringify(me) + "\n");
  });
  const name = lockName(service, resolved);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(name, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EADDRINUSE") throw e;
    const holder = await askHolder(name);
    const who = holder
      ? `pid ${holder.pid}, \`${holder.command}\`, since ${holder.since}`
      : "a process that does not say who it is";
    throw new ServiceLockedError(
      `another ${service} already runs on the data folder ${resolved} (${who}): stop it first, or give this one another storage.data_dir`,
      holder,
    );
  }
  server.unref(); // the lock alone keeps no process alive
  return {
    dataDir: resolved,
    release: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Asks the lock's holder who it is (bounded: a holder that says nothing is not waited for). */
async function askHolder(name: string): Promise<LockHolder | undefined> {
  return new Promise((resolve) => {
    let text = "";
    const c = net.connect(name);
    const done = (holder: LockHolder | undefined) => {
      clearTimeout(timer);
      c.destroy();
      resolve(holder);
    };
    const timer = setTimeout(() => done(undefined), 1000);
    c.setEncoding("utf8");
    c.on("data", (d: string) => {
      text += d;
      if (text.length > 64 * 1024) done(undefined);
    });
    c.on("end", () => {
      try {
        done(JSON.parse(text) as LockHolder);
      } catch {
        done(undefined);
      }
    });
    c.on("error", () => done(undefined));
  });
}
