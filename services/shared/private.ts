import { chmodSync, lstatSync, mkdirSync, readdirSync } from "node:fs";
import path from "node:path";

/**
 * Makes the data folder readable by this service's user alone: the folder 0700, and every
 * file directly in it (databases, their WAL and shared-memory files, keys) 0600 — also
 * those an earlier version left readable. New files are private by the services' umask
 * (077, set at start); SQLite gives a database's WAL and -shm files the database's mode.
 */
export function privateDataDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  for (const name of readdirSync(dir)) {
    const file = path.join(dir, name);
    const st = lstatSync(file);
    if (st.isFile() && (st.mode & 0o077) !== 0) chmodSync(file, st.mode & 0o700);
  }
}
