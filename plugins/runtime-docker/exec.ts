import { constants } from "node:os";
import { PassThrough } from "node:stream";
import type Docker from "dockerode";
import { MAX_LINE_BYTES, splitLines } from "../lines.ts";
import type { ExecRequest, Execution, ExitStatus } from "../runtime.ts";

const STDERR_TAIL = 4096;

/**
 * Runs as the agent's user: first ends whatever of the agent's user still runs in the container
 * (`kill -KILL -1`: an earlier run that killed its own wrapper and lifeline holder, which are
 * its user's too, left it), so a run starts alone; starts the loopback forwarder to the model proxy (when the
 * container has a model socket) and waits until it listens, runs the program, and when it
 * ends kills every process of the agent's user in the container (`kill -KILL -1`: all but
 * itself and PID 1, which is nobody's) before exiting with the program's status. Whatever the
 * run started — a new session, a clean environment, a double fork — is the agent's user's,
 * so it ends with the run. TERM (the first step of kill()) is the program's: the wrapper
 * waits on. With CONDUCTOR_RUN_LIFELINE in the container's env it first connects to that
 * socket of its AgentHost and, when the connection closes (the AgentHost died, or cut it to end
 * the run without the engine), kills every process of the agent's user: no run outlives its
 * AgentHost or its say. With CONDUCTOR_RUN_LIFELINE_IDLE_MS in the exec's env (a joined node's
 * runs) the same happens once the AgentHost has sent nothing on it for that long (socat -T): a
 * frozen AgentHost holds the connection open but ticks no more. The holder ignores TERM (the killer spares it: see KILLER), so a graceful
 * stop stays graceful. Needs sh, grep, kill and socat in the image (busybox's or Debian's).
 */
const WRAPPER = `kill -KILL -1 2>/dev/null
if [ -n "\${CONDUCTOR_RUN_LIFELINE:-}" ]; then
  t=; i=\${CONDUCTOR_RUN_LIFELINE_IDLE_MS:-}
  case "$i" in ""|*[!0-9]*) ;; *) t="-T $((i / 1000)).$(printf %03d $((i % 1000)))" ;; esac
  (trap '' TERM INT HUP; socat -u $t "UNIX-CONNECT:$CONDUCTOR_RUN_LIFELINE" OPEN:/dev/null; kill -KILL -1) </dev/null >/dev/null 2>&1 &
fi
if [ -n "\${CONDUCTOR_MODEL_SOCKET:-}" ]; then
  port=\${CONDUCTOR_MODEL_PORT:-8080}
  socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$CONDUCTOR_MODEL_SOCKET" </dev/null >/dev/null 2>&1 &
  hex=$(printf '%04X' "$port"); i=0
  until grep -q "0100007F:$hex 00000000:0000 0A" /proc/net/tcp 2>/dev/null || [ $i -ge 500 ]; do sleep 0.01; i=$((i+1)); done
fi
"$@" </dev/null &
c=$!
trap : TERM INT HUP
wait "$c"; rc=$?
while kill -0 "$c" 2>/dev/null; do wait "$c"; rc=$?; done
kill -KILL -1 2>/dev/null
exit "$rc"`;

/**
 * Signals every process of the agent's user in the container but itself: KILL all at once
 * (kill -1); TERM each but a run's lifeline holder, which must stay to the end.
 */
const KILLER = `if [ "$1" = KILL ]; then kill -KILL -1 2>/dev/null; exit 0; fi
for d in /proc/[0-9]*; do
  p=\${d#/proc/}
  [ "$p" = "$$" ] && continue
  case "$(tr '\\0' ' ' <"$d/cmdline" 2>/dev/null)" in
    "socat -u "*"UNIX-CONNECT:"*) ;;
    *) kill -"$1" "$p" 2>/dev/null ;;
  esac
done
exit 0`;

/** How long an engine call made while ending an exec may take. */
const CALL_TIMEOUT_MS = 5000;

/**
 * Runs one short command in the container and waits for it (for the killer); its exit code,
 * null when the engine cannot tell (an exec the container refused to start is 126, say).
 */
async function runQuiet(
  container: Docker.Container,
  cmd: string[],
  user: string,
): Promise<number | null> {
  const abortSignal = AbortSignal.timeout(CALL_TIMEOUT_MS);
  const ex = await container.exec({
    Cmd: cmd,
    User: user,
    AttachStdout: true,
    AttachStderr: true,
    abortSignal,
  });
  const stream = await ex.start({ hijack: true, stdin: false, abortSignal });
  stream.resume();
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => (stream.destroy(), resolve()), CALL_TIMEOUT_MS);
    const done = () => (clearTimeout(timer), resolve());
    stream.once("end", done);
    stream.once("close", done);
    stream.on("error", done);
  });
  return exitCodeOf(ex).catch(() => null);
}

/** The exit code an exec reports once the engine has recorded it (bounded poll). */
async function exitCodeOf(ex: Docker.Exec): Promise<number | null> {
  for (let i = 0; i < 40; i++) {
    const info = await ex.inspect({ abortSignal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
    if (!info.Running) return info.ExitCode ?? null;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return null;
}

/**
 * Starts `req.argv` in a running container under the wrapper: stdout comes back as lines
 * in order, stderr as a tail, the exit code from the engine; kill() ends the whole tree.
 * `abortSignal` bounds creating and starting the exec, not the run.
 */
export async function startExec(
  docker: Docker,
  container: Docker.Container,
  req: ExecRequest,
  user: string,
  abortSignal: AbortSignal,
): Promise<Execution> {
  if (req.argv.length === 0) throw new Error("exec: empty argv");
  const ex = await container.exec({
    Cmd: ["/bin/sh", "-c", WRAPPER, "conductor-exec", ...req.argv],
    User: user,
    Env: Object.entries(req.env).map(([k, v]) => `${k}=${v}`),
    WorkingDir: req.cwd,
    AttachStdout: true,
    AttachStderr: true,
    abortSignal,
  });
  const stream = await ex.start({ hijack: true, stdin: false, abortSignal });
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  docker.modem.demuxStream(stream, stdout, stderr);
  let stderrText = "";
  stderr.setEncoding("utf8");
  stderr.on("data", (d: string) => {
    stderrText = (stderrText + d).slice(-STDERR_TAIL);
  });
  const listeners: ((line: string) => void)[] = [];
  const linesClosed = splitLines(
    stdout,
    (line) => listeners.forEach((fn) => fn(line)),
    () => {
      stderrText += `\nconductor: the run printed a line over ${MAX_LINE_BYTES} bytes on stdout and was ended`;
      signalTree("KILL").catch(() => undefined); // it reports nothing; exited tells the end
    },
  );
  const streamEnded = new Promise<void>((resolve) => {
    const end = () => {
      stdout.end();
      stderr.end();
      resolve();
    };
    stream.once("end", end);
    stream.once("close", end);
    stream.on("error", end); // every error, not the first: a second one must not go unhandled
  });

  let killedWith: NodeJS.Signals | undefined;
  let done = false;
  const exited: Promise<ExitStatus> = (async () => {
    await streamEnded;
    await linesClosed;
    let code: number | null;
    let sandboxKilled = false;
    try {
      code = await exitCodeOf(ex);
    } catch {
      code = null; // the container went away with it
    }
    // The wrapper's last step ends what the run left (kill -KILL -1), then it exits with the
    // program's status. One killed (by a signal: over 128; or gone) did not take that step:
    // the run may have killed it so that what it started lives on, to act as the agent once
    // the next run opens the model proxy. That is ended here, before the run is over.
    if (code === null || code > 128) {
      const killed = await runQuiet(
        container,
        ["/bin/sh", "-c", KILLER, "conductor-kill", "KILL"],
        user,
      ).catch(() => null);
      // The killer could not run (the run filled the container's pids limit, say): the
      // container goes, and everything in it; the AgentHost replaces the agent's container.
      if (killed !== 0) {
        sandboxKilled = true;
        await container
          .kill({ signal: "SIGKILL", abortSignal: AbortSignal.timeout(CALL_TIMEOUT_MS) })
          .catch(() => undefined); // gone already, or its engine with it
      }
    }
    done = true;
    const killedToo = sandboxKilled ? { sandboxKilled } : {};
    if (killedWith && code !== null && code > 128) {
      const signal = Object.entries(constants.signals).find(([, n]) => n === code - 128)?.[0];
      if (signal) return { code: null, signal: signal as NodeJS.Signals, ...killedToo };
    }
    if (code === 126 || code === 127) {
      // The shell could not execute the program (not found / not executable).
      const spawnError = new Error(
        `could not start ${req.argv[0]} in the container: ${stderrText.trim()}`,
      );
      return { code, signal: null, spawnError };
    }
    return { code, signal: null, ...killedToo };
  })();

  const signalTree = async (sig: "TERM" | "KILL") => {
    killedWith = `SIG${sig}`;
    try {
      await runQuiet(container, ["/bin/sh", "-c", KILLER, "conductor-kill", sig], user);
    } catch {
      // the container is gone or stopped: so is the exec
    }
  };

  return {
    onStdoutLine: (fn) => void listeners.push(fn),
    pause: () => void stream.pause(),
    resume: () => void stream.resume(),
    stderrTail: () => stderrText,
    exited,
    kill: async (graceMs = 2000) => {
      stream.resume(); // its end is read from the stream
      if (done) return exited;
      await signalTree("TERM");
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), graceMs);
      });
      const over = await Promise.race([exited.then(() => false), graceOver]);
      clearTimeout(timer);
      if (!over) return exited;
      await signalTree("KILL");
      // An engine that does not answer may never end the stream: stop reading it after a while.
      const ended = await Promise.race([
        exited.then(() => true),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), graceMs);
        }),
      ]);
      clearTimeout(timer);
      if (!ended) stream.destroy();
      return exited;
    },
  };
}
