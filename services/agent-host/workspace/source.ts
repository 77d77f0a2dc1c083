import { createHash } from "node:crypto";
import path from "node:path";
import { quote } from "../../shared/quote.ts";
import { badInput } from "./errors.ts";

/** A repository a task names, checked and normalised. */
export interface Source {
  /** What git is given: an absolute, normalised path or the URL (trailing slashes dropped). */
  url: string;
  /** A local path (checked to exist before git is asked). */
  local: boolean;
  /** The URL with any password hidden, for messages and logs. */
  display: string;
  /** The cache's folder name: the first 16 hex digits of sha256(url). */
  key: string;
}

const SCHEMES = new Set(["file", "git", "ssh", "https"]);

/**
 * Checks a repository string and normalises it. Accepted: an absolute local path, a URL with
 * scheme file, git, ssh or https, or ssh's `[user@]host:path`. Refused (INVALID_ARGUMENT): a
 * leading `-`, NUL or line breaks, other schemes, transport helpers (`ext::…`).
 */
export function parseSource(repository: string): Source {
  const q = quote(hidePassword(repository));
  if (repository === "") throw badInput("the task names no repository: give a path or URL");
  if (/[\0\r\n]/.test(repository))
    throw badInput(`repository ${q} contains NUL or a line break: give a plain path or URL`);
  if (repository.trim() !== repository || repository.startsWith("-"))
    throw badInput(`repository ${q} starts with "-" or a space: give a plain path or URL`);
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(repository)?.[1]?.toLowerCase();
  if (scheme !== undefined) {
    if (!SCHEMES.has(scheme))
      throw badInput(
        `repository ${q} uses the scheme ${scheme}: only file://, git://, ssh:// and https:// URLs (or a local path) are allowed`,
      );
    const rest = repository.slice(scheme.length + 3).replace(/\/+$/, "");
    if (rest === "") throw badInput(`repository ${q} names no host or path`);
    const url = `${scheme}://${rest}`;
    return made(url, false);
  }
  if (/^[A-Za-z0-9+.-]+::/.test(repository))
    throw badInput(
      `repository ${q} names a git transport helper: only file://, git://, ssh:// and https:// URLs (or a local path) are allowed`,
    );
  if (path.isAbsolute(repository)) {
    const p = path.normalize(repository);
    return made(p.length > 1 ? p.replace(/\/+$/, "") : p, true);
  }
  // ssh's scp-like form: [user@]host:path, the host without a slash before the colon.
  if (/^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:./.test(repository))
    return made(repository, false);
  throw badInput(
    `repository ${q} is neither an absolute path nor a URL: give an absolute path on this node or a file://, git://, ssh:// or https:// URL`,
  );
}

function made(url: string, local: boolean): Source {
  const key = createHash("sha256").update(url).digest("hex").slice(0, 16);
  return { url, local, display: hidePassword(url), key };
}

/** `https://user:secret@host/x` → `https://user:***@host/x`. */
export function hidePassword(url: string): string {
  return url.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/[^/@:]*):[^/@]*@/, "$1:***@");
}

/**
 * A ref as the task gives it ("" = the source's HEAD): a branch, tag or commit id. Refused
 * (INVALID_ARGUMENT): a leading `-`, control characters, spaces, `..`, `@{`, and other
 * characters git refuses in ref names.
 */
export function checkRef(ref: string): void {
  if (ref === "") return;
  if (
    ref.length > 255 ||
    ref.startsWith("-") ||
    ref.startsWith("/") ||
    ref.endsWith("/") ||
    ref.endsWith(".lock") ||
    ref.includes("..") ||
    ref.includes("@{") ||
    ref.includes("//") ||
    // eslint-disable-next-line no-control-regex
    /[\u0000-\u0020\u007f~^:?*[\\]/.test(ref)
  )
    throw badInput(
      `ref ${quote(ref)} is not a valid branch, tag or commit name: give an existing branch, tag or commit id (or nothing for the repository's HEAD)`,
    );
}

/**
 * A task id as it appears in file names and refs (`conductor/<taskId>`): letters, digits,
 * `.`, `_` and `-`, not starting with `.` or `-`, at most 128 characters.
 */
export function checkTaskId(taskId: string): void {
  if (
    !/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/.test(taskId) ||
    taskId.includes("..") ||
    taskId.endsWith(".lock") ||
    taskId.endsWith(".")
  )
    throw badInput(
      `task id ${quote(taskId)} cannot name a workspace: use letters, digits, ".", "_" and "-"`,
    );
}

/** A value written into a commit message or trailer: one line, at most `max` characters. */
export function oneLine(s: string, max = 200): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f]+/g, " ").slice(0, max);
}
