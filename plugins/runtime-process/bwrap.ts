import { execFile } from "node:child_process";
import { existsSync, lstatSync, readlinkSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import type { Mount } from "../runtime.ts";

/** The bubblewrap binary (Debian's `bubblewrap` package). */
export const BWRAP = "bwrap";

/** util-linux's setpriv: drops root to the sandbox's uid:gid inside the sandbox. */
export const SETPRIV = "/usr/bin/setpriv";

/** util-linux's nsenter: starts a run's bwrap in its agent's network namespace (index.ts). */
export const NSENTER = "/usr/bin/nsenter";

/**
 * The system, read-only in every sandbox: programs, libraries and /etc (passwd, resolver,
 * certificates). Where the host has /bin → usr/bin the sandbox gets the same symlink.
 */
const SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"];

/** How one exec's sandbox is laid out. */
export interface BwrapPlan {
  /** Folders (or files) bound at the same path: the agent's workspace read-write, the rest read-only. */
  mounts: Mount[];
  /** Working directory inside; must be under a mount. */
  cwd: string;
  /**
   * uid:gid to run as. Root's AgentHost binds as root, then setpriv drops to this user (no
   * capabilities, no_new_privs). Undefined: a non-root AgentHost's own uid, in a user namespace.
   */
  user?: { uid: number; gid: number } | undefined;
  /** The program and its arguments. */
  argv: string[];
  /**
   * "own" (default): a new network namespace, only loopback in it. "entered": none made, the
   * caller's is kept: bwrap is started inside its agent's namespace (nsenter), which holds
   * nothing but loopback either.
   */
  network?: "own" | "entered";
  /** Variables of bwrap's own environment (markers) its sandbox's processes do not get. */
  unsetEnv?: string[] | undefined;
}

/**
 * The bwrap command line for one exec: new pid, network (unless `plan.network` is "entered"),
 * IPC, UTS and cgroup namespaces (only loopback inside), a new session, an empty /tmp, a fresh
 * /dev and /proc, the system read-only, and only the plan's mounts of the host's files besides
 * — none of the data folder, no other agent's folders. `--die-with-parent` ends the sandbox with its AgentHost;
 * the pid namespace ends every process in it (however started: setsid, double fork, a
 * clean environment) when its first process exits. Flags: bubblewrap(1), 0.8.
 */
export function bwrapArgv(plan: BwrapPlan): string[] {
  const args = [
    "--die-with-parent",
    "--new-session",
    "--unshare-pid",
    ...(plan.network === "entered" ? [] : ["--unshare-net"]),
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--hostname",
    "conductor-agent",
  ];
  for (const dir of SYSTEM_DIRS) args.push(...systemBind(dir));
  args.push("--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp");
  // bwrap (as root) makes missing parents of a mount point mode 0700: make them 0755 first,
  // so the sandbox's user can walk to its workspace.
  const made = new Set<string>(["/", "/tmp"]);
  for (const m of [...plan.mounts].sort((a, b) => a.hostPath.localeCompare(b.hostPath))) {
    for (const dir of ancestors(m.hostPath)) {
      if (made.has(dir) || SYSTEM_DIRS.some((s) => dir === s || dir.startsWith(`${s}/`))) continue;
      made.add(dir);
      args.push("--perms", "0755", "--dir", dir);
    }
    args.push(m.readOnly ? "--ro-bind" : "--bind", m.hostPath, m.hostPath);
  }
  for (const name of plan.unsetEnv ?? []) args.push("--unsetenv", name);
  args.push("--chdir", plan.cwd);
  if (plan.user) {
    // setpriv needs these two to change uid; it then clears every capability.
    args.push("--cap-add", "CAP_SETUID,CAP_SETGID", "--");
    args.push(
      SETPRIV,
      `--reuid=${plan.user.uid}`,
      `--regid=${plan.user.gid}`,
      "--clear-groups",
      "--inh-caps=-all",
      "--bounding-set=-all",
      "--no-new-privs",
      "--",
    );
  } else {
    args.push("--unshare-user", "--");
  }
  return [BWRAP, ...args, ...plan.argv];
}

/** "/a/b/c" → ["/a", "/a/b"]. */
function ancestors(p: string): string[] {
  const out: string[] = [];
  let dir = path.dirname(p);
  while (dir !== "/" && dir !== ".") {
    out.unshift(dir);
    dir = path.dirname(dir);
  }
  return out;
}

/** How each system folder is given, read once (the system's layout does not change under us). */
const systemBinds = new Map<string, string[]>();

function systemBind(dir: string): string[] {
  let bind = systemBinds.get(dir);
  if (!bind) {
    bind = !existsSync(dir)
      ? []
      : lstatSync(dir).isSymbolicLink()
        ? ["--symlink", readlinkSync(dir), dir]
        : ["--ro-bind", dir, dir];
    systemBinds.set(dir, bind);
  }
  return bind;
}

const NO_SOCAT = "socat is not installed: apt-get install socat";

/** Whether a sandbox can be made here; `detail` says why not and what to do. */
export interface SandboxProbe {
  ok: boolean;
  detail: string;
}

/**
 * Makes one sandbox exactly as runs get it and runs `socat -V` in it (the sandboxed runs'
 * launcher needs socat: index.ts). Fails with the reason (bwrap missing, namespaces not
 * allowed, setpriv, socat or, for root, nsenter missing) and the fix.
 */
export async function probeSandbox(user: BwrapPlan["user"]): Promise<SandboxProbe> {
  if (user && !existsSync(NSENTER))
    return { ok: false, detail: `${NSENTER} is missing: apt-get install util-linux` };
  const [cmd, ...args] = bwrapArgv({
    mounts: [],
    cwd: "/tmp",
    user,
    argv: ["/bin/sh", "-c", `command -v socat >/dev/null || { echo "${NO_SOCAT}" >&2; exit 1; }`],
  });
  try {
    const { stdout } = await promisify(execFile)(BWRAP, ["--version"], { timeout: 5000 });
    await promisify(execFile)(cmd!, args, { timeout: 10_000, env: {} });
    return { ok: true, detail: stdout.trim() };
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    const said = (err.stderr ?? err.message).trim();
    const why =
      err.code === "ENOENT"
        ? "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
        : said === NO_SOCAT
          ? said
          : `bubblewrap cannot make a sandbox here: ${said}`;
    return { ok: false, detail: why };
  }
}
