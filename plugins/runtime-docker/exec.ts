import { randomUUID } from "node:crypto";
import { constants } from "node:os";
import { PassThrough } from "node:stream";
import { createInterface } from "node:readline";
import type Docker from "dockerode";
import type { ExecRequest, Execution, ExitStatus } from "../runtime.ts";

const STDERR_TAIL = 4096;
const PID_DIR = "/tmp/.conductor-exec";

// Sends signal $2 to every process carrying exec $1's marker, except the wrapper (which has
// no marker: it is set for its child only) and this script's own processes.
const SWEEP = `sweep() {
  for e in $(grep -lszxF "CONDUCTOR_EXEC=$1" /proc/[0-9]*/environ); do
    q=\${e%/environ}
    kill -$2 "\${q#/proc/}" 2>/dev/null
  done
}`;

/**
 * Runs the program in its own session (so its process group is everything it starts) with a
 * marker in its environment, records the group's id, and when it ends kills whatever it
 * left behind before exiting with its status. Docker has no "kill exec": this is what
 * lets kill() and exited reach the whole tree. Needs sh, setsid, grep -z and kill in the
 * image (busybox or Debian's).
 */
const WRAPPER = `${SWEEP}
id=$1; shift
[ -d ${PID_DIR} ] || mkdir -p ${PID_DIR} 2>/dev/null
CONDUCTOR_EXEC=$id setsid "$@" &
c=$!
echo "$c" >"${PID_DIR}/$id" 2>/dev/null
wait "$c"; rc=$?
kill -KILL -"$c" 2>/dev/null
sweep "$id" KILL
rm -f "${PID_DIR}/$id"
exit "$rc"`;

/** Signals exec $1's process group and every process carrying its marker. */
const KILLER = `${SWEEP}
c=$(cat "${PID_DIR}/$1" 2>/dev/null) && kill -$2 -"$c" 2>/dev/null
sweep "$1" $2
exit 0`;

/** Runs one short command in the container and waits for it (for the killer). */
async function runQuiet(container: Docker.Container, cmd: string[]): Promise<void> {
  const ex = await container.exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true });
  const stream = await ex.start({ hijack: true, stdin: false });
  stream.resume();
  await new Promise<void>((resolve) => {
    stream.once("end", resolve);
    stream.once("close", resolve);
    stream.once("error", () => resolve());
  });
}

/** The exit code an exec reports once the engine has recorded it (bounded poll). */
async function exitCodeOf(ex: Docker.Exec): Promise<number | null> {
  for (let i = 0; i < 40; i++) {
    const info = await ex.inspect();
    if (!info.Running) return info.ExitCode ?? null;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return null;
}

/**
 * Starts `req.argv` in a running container under the wrapper: stdout comes back as lines
 * in order, stderr as a tail, the exit code from the engine; kill() ends the whole tree.
 */
export async function startExec(
  docker: Docker,
  container: Docker.Container,
  req: ExecRequest,
): Promise<Execution> {
  if (req.argv.length === 0) throw new Error("exec: empty argv");
  const id = randomUUID();
  const ex = await container.exec({
    Cmd: ["/bin/sh", "-c", WRAPPER, "conductor-exec", id, ...req.argv],
    Env: Object.entries(req.env).map(([k, v]) => `${k}=${v}`),
    WorkingDir: req.cwd,
    AttachStdout: true,
    AttachStderr: true,
  });
  const stream = await ex.start({ hijack: true, stdin: false });
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  docker.modem.demuxStream(stream, stdout, stderr);
  let stderrText = "";
  stderr.setEncoding("utf8");
  stderr.on("data", (d: string) => {
    stderrText = (stderrText + d).slice(-STDERR_TAIL);
  });
  const listeners: ((line: string) => void)[] = [];
  const lines = createInterface({ input: stdout, crlfDelay: Infinity });
  lines.on("line", (line) => listeners.forEach((fn) => fn(line)));
  const linesClosed = new Promise<void>((resolve) => lines.once("close", resolve));
  const streamEnded = new Promise<void>((resolve) => {
    const end = () => {
      stdout.end();
      stderr.end();
      resolve();
    };
    stream.once("end", end);
    stream.once("close", end);
    stream.once("error", end);
  });

  let killedWith: NodeJS.Signals | undefined;
  let done = false;
  const exited: Promise<ExitStatus> = (async () => {
    await streamEnded;
    await linesClosed;
    let code: number | null;
    try {
      code = await exitCodeOf(ex);
    } catch {
      code = null; // the container went away with it
    }
    done = true;
    if (killedWith && code !== null && code > 128) {
      const signal = Object.entries(constants.signals).find(([, n]) => n === code - 128)?.[0];
      if (signal) return { code: null, signal: signal as NodeJS.Signals };
    }
    if (code === 126 || code === 127) {
      // setsid could not execute the program (not found / not executable).
      const spawnError = new Error(
        `could not start ${req.argv[0]} in the container: ${stderrText.trim()}`,
      );
      return { code, signal: null, spawnError };
    }
    return { code, signal: null };
  })();

  const signalTree = async (sig: "TERM" | "KILL") => {
    killedWith = `SIG${sig}`;
    try {
      await runQuiet(container, ["/bin/sh", "-c", KILLER, "conductor-kill", id, sig]);
    } catch {
      // the container is gone or stopped: so is the exec
    }
  };

  return {
    onStdoutLine: (fn) => void listeners.push(fn),
    stderrTail: () => stderrText,
    exited,
    kill: async (graceMs = 2000) => {
      if (done) return exited;
      await signalTree("TERM");
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), graceMs);
      });
      const over = await Promise.race([exited.then(() => false), graceOver]);
      clearTimeout(timer);
      if (over) await signalTree("KILL");
      return exited;
    },
  };
}
