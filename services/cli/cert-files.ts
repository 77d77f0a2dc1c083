// How `conductor certs` writes: keys private from their first byte, every file written aside in
// a scratch folder of the certificate folder and then moved into place whole.
import {
  closeSync,
  fchmodSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import path from "node:path";

/** Private keys are their owner's alone; certificates are public. */
export const KEY_MODE = 0o600;
export const CERT_MODE = 0o644;

/** Makes `dir` (0700) when missing; an Error when it is something else. */
export function makeDir(dir: string) {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "EEXIST" && code !== "ENOTDIR") throw e;
  }
  if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory())
    throw new Error(`${dir} is not a folder (a file, or under one): give --dir a folder`);
}

/** Runs `work` in a private scratch folder inside `dir` (so renames from it are atomic), then removes it. */
export async function inScratch<T>(dir: string, work: (scratch: string) => Promise<T>): Promise<T> {
  makeDir(dir);
  const scratch = mkdtempSync(path.join(dir, ".certs-"));
  try {
    return await work(scratch);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Writes a new file created with `mode` (never readable by others, even for a moment), synced. */
export function writeNew(file: string, text: string, mode: number) {
  const fd = openSync(file, "wx", mode);
  try {
    if (mode === CERT_MODE) fchmodSync(fd, mode); // public whatever the umask
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
