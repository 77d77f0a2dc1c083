// Several "hosts" on one machine for tests: Linux network namespaces joined by a bridge that
// sits in a namespace of its own, on a private /24 picked at random. Nothing is configured in
// the root namespace, and every name carries the run's own id, so runs side by side never meet.
import {
  execFile,
  spawn,
  spawnSync,
  type ChildProcess,
  type SpawnOptions,
} from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { constants } from "node:os";
import { promisify } from "node:util";

/** Debian's iproute2 (an absolute path: a spawn's own env may have a PATH without sbin). */
const IP = "/sbin/ip";
const run = promisify(execFile);
/** Hosts take .2 … .(n+1) of the /24. */
const MAX_HOSTS = 200;
/** How long close() waits for the namespaces' processes to be gone after SIGKILL. */
const KILL_WAIT_MS = 10_000;
/** How long linkUp() waits for the link to carry traffic again. */
const LINK_WAIT_MS = 5_000;

/** One namespace on the test network: a "host" with its own loopback and one address. */
export interface NetHost {
  /** Namespace name. */
  readonly ns: string;
  /** Its address on the test network, e.g. "10.91.7.2". */
  readonly address: string;
  /** Starts a process inside the namespace (via `ip netns exec`), env/cwd/stdio as child_process.spawn; tracked so close() kills it. */
  spawn(command: string, args: string[], opts?: SpawnOptions): ChildProcess;
  /** Runs a command to completion inside the namespace (killed after timeoutMs, 30 s by default). */
  exec(
    command: string,
    args: string[],
    opts?: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv },
  ): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Cuts this host off the network (its link down) / restores it (resolves once the link is up). */
  linkDown(): Promise<void>;
  linkUp(): Promise<void>;
  /** PIDs of every process now in this namespace (`ip netns pids`). */
  pids(): Promise<number[]>;
}

/** The hosts of one makeNet call; close() (or `await using`) removes all of it. */
export interface TestNet extends AsyncDisposable {
  /** The run's id, e.g. "ct3f09a1": every namespace and interface name it makes starts with it. */
  readonly id: string;
  hosts: NetHost[];
  close(): Promise<void>;
}

/** Runs `ip …` in the root namespace's view (most calls name a namespace with -n). */
async function ip(...args: string[]): Promise<string> {
  try {
    return (await run(IP, args, { timeout: 10_000 })).stdout;
  } catch (e) {
    const stderr = (e as { stderr?: string }).stderr?.trim() ?? "";
    throw new Error(`ip ${args.join(" ")} failed: ${stderr || String(e)}`, { cause: e });
  }
}

/** Parses `ip netns pids` output. */
function parsePids(out: string): number[] {
  return out.split("\n").filter(Boolean).map(Number);
}

/** SIGKILL, ignoring a process already gone. */
function kill9(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // exited meanwhile
  }
}

/** Makes `n` namespaces joined by one bridge (in a switch namespace of its own), each with lo up and one address. */
export async function makeNet(n: number): Promise<TestNet> {
  if (!Number.isInteger(n) || n < 1 || n > MAX_HOSTS)
    throw new RangeError(`makeNet(n): n must be an integer from 1 to ${MAX_HOSTS}, got ${n}`);
  // "ct" + 6 hex digits: interface names stay within 15 characters ("ct0a1b2ch199").
  const id = `ct${randomBytes(3).toString("hex")}`;
  const subnet = `10.${randomInt(256)}.${randomInt(256)}`;
  const switchNs = `${id}-switch`;
  const bridge = `${id}br`;
  /** Namespaces made so far, each deleted by close() (hosts first, the switch last). */
  const made: string[] = [];
  const children = new Set<ChildProcess>();
  let closing: Promise<void> | undefined;

  // Best effort when the process exits without close(): synchronous, so it runs in "exit".
  const onExit = () => {
    for (const ns of made) {
      const out = spawnSync(IP, ["netns", "pids", ns], { encoding: "utf8" }).stdout ?? "";
      parsePids(out).forEach(kill9);
      spawnSync(IP, ["netns", "del", ns]);
    }
  };
  process.on("exit", onExit);

  /** Host i's namespace, its interface there, and that interface's peer on the bridge. */
  const names = (i: number) => ({ ns: `${id}-h${i}`, ifname: `${id}h${i}`, port: `${id}p${i}` });
  const host = (i: number): NetHost => {
    const { ns, ifname } = names(i);
    const h: NetHost = {
      ns,
      address: `${subnet}.${i + 2}`,
      spawn(command, args, opts = {}) {
        if (closing) throw new Error(`spawn in ${ns}: the test network is closed`);
        const child = spawn(IP, ["netns", "exec", ns, command, ...args], opts);
        children.add(child);
        child.once("exit", () => children.delete(child));
        child.once("error", () => child.pid === undefined && children.delete(child));
        return child;
      },
      exec(command, args, opts = {}) {
        const timeoutMs = opts.timeoutMs ?? 30_000;
        const child = h.spawn(command, args, {
          env: opts.env,
          stdio: ["pipe", "pipe", "pipe"],
        });
        let stdout = "";
        let stderr = "";
        child.stdout?.setEncoding("utf8").on("data", (d: string) => (stdout += d));
        child.stderr?.setEncoding("utf8").on("data", (d: string) => (stderr += d));
        child.stdin?.on("error", () => {}); // a command that exits before reading its input
        child.stdin?.end(opts.input ?? "");
        return new Promise((resolve, reject) => {
          const timer = setTimeout(() => {
            child.kill("SIGKILL");
            reject(new Error(`${command} in ${ns} did not end within ${timeoutMs} ms:\n${stderr}`));
          }, timeoutMs);
          child.once("error", (e) => {
            clearTimeout(timer);
            reject(e);
          });
          child.once("close", (code, signal) => {
            clearTimeout(timer);
            resolve({
              code: code ?? 128 + (signal ? constants.signals[signal] : 0),
              stdout,
              stderr,
            });
          });
        });
      },
      async linkDown() {
        await ip("-n", ns, "link", "set", "dev", ifname, "down");
      },
      async linkUp() {
        await ip("-n", ns, "link", "set", "dev", ifname, "up");
        // Carrier comes up asynchronously; the bridge (no STP) forwards as soon as it has.
        const deadline = Date.now() + LINK_WAIT_MS;
        for (;;) {
          const [link] = JSON.parse(await ip("-j", "-n", ns, "link", "show", "dev", ifname)) as {
            operstate: string;
          }[];
          if (link?.operstate === "UP") return;
          if (Date.now() > deadline)
            throw new Error(`${ifname} in ${ns} not up after ${LINK_WAIT_MS} ms`);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      },
      async pids() {
        return parsePids(await ip("netns", "pids", ns));
      },
    };
    return h;
  };

  /** Kills every process of the namespaces, waits until none is left, then deletes them. */
  const teardown = async () => {
    for (const child of children) child.kill("SIGKILL");
    const deadline = Date.now() + KILL_WAIT_MS;
    let left: number[] = [];
    for (;;) {
      left = (await Promise.all(made.map((ns) => ip("netns", "pids", ns)))).flatMap(parsePids);
      if (left.length === 0 && children.size === 0) break;
      if (Date.now() > deadline) break;
      left.forEach(kill9);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const errors: unknown[] = [];
    // Deleting a host's namespace destroys its veth pair; the switch's takes the bridge.
    for (const ns of [...made].reverse()) {
      await ip("netns", "del", ns).catch((e: unknown) => errors.push(e));
    }
    made.length = 0;
    process.off("exit", onExit);
    if (left.length > 0 || children.size > 0)
      errors.push(new Error(`processes still in ${id}'s namespaces: ${left.join(", ")}`));
    if (errors.length > 0) throw new AggregateError(errors, `closing test network ${id}`);
  };
  const close = () => (closing ??= teardown());

  try {
    await ip("netns", "add", switchNs);
    made.push(switchNs);
    await ip("-n", switchNs, "link", "add", bridge, "type", "bridge");
    await ip("-n", switchNs, "link", "set", "dev", bridge, "up");
    const hosts: NetHost[] = [];
    for (let i = 0; i < n; i++) {
      const h = host(i);
      const { ifname, port } = names(i);
      await ip("netns", "add", h.ns);
      made.push(h.ns);
      // The pair is made straight into the two namespaces: neither end ever sits in the root one.
      await ip(
        ...["link", "add", ifname, "netns", h.ns, "type", "veth"],
        ...["peer", "name", port, "netns", switchNs],
      );
      await ip("-n", switchNs, "link", "set", "dev", port, "master", bridge, "up");
      await ip("-n", h.ns, "link", "set", "dev", "lo", "up");
      await ip("-n", h.ns, "addr", "add", `${h.address}/24`, "dev", ifname);
      await ip("-n", h.ns, "link", "set", "dev", ifname, "up");
      hosts.push(h);
    }
    return { id, hosts, close, [Symbol.asyncDispose]: close };
  } catch (e) {
    try {
      await close();
    } catch (cleanup) {
      throw new AggregateError([e, cleanup], `making test network ${id} failed, then removing it`);
    }
    throw e;
  }
}
