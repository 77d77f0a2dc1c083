/**
 * The container-backend plugin contract, engine-neutral, shaped after Nomad's task drivers
 * and Kubernetes' CRI: fingerprint · create · start · exec · stop · destroy · inspect ·
 * stats · recover · list. An agent is one long-lived sandbox (a container, or a plain
 * folder for the process backend); a task is an exec into it.
 */

/** Labels every backend puts on what it creates, so a restart can find and reap it. */
export const LABEL_NODE = "dev.conductor.node";
export const LABEL_AGENT = "dev.conductor.agent";
/**
 * Which AgentHost instance (of possibly several on one machine or engine) created it. Container
 * backends put it in the container's name too, so two AgentHosts on one engine never collide.
 */
export const LABEL_HOST = "dev.conductor.host";
/** A digest of the spec it was made from: a restarted AgentHost re-adopts only an unchanged one. */
export const LABEL_SPEC = "dev.conductor.spec";

/**
 * The uid:gid a container's own processes (its main process, idling and holding the
 * lifeline) run as — never the agent's user, so that ending all of the agent's user's
 * processes ends a run and nothing else, and the agent cannot signal them.
 */
export const SANDBOX_INFRA_USER = "65534:65534";

/** Whether the engine is there and what it can do. */
export interface Fingerprint {
  runtime: string;
  healthy: boolean;
  /** Engine version, or why it is unhealthy (naming the socket and how to start it). */
  detail: string;
  capabilities: Capabilities;
}

/** What a backend can do; the AgentHost reads these, never the backend's name. */
export interface Capabilities {
  /** Memory/CPU/pids limits are enforced. */
  limits: boolean;
  /** Network isolation (network mode none) is possible. */
  networkIsolation: boolean;
  /**
   * Agents run in an image's file system: the CLI and node are the image's (on its PATH), not
   * this machine's, and a sandbox can die by itself (crash, OOM, killed from outside).
   */
  image: boolean;
  /**
   * A run does not end with the AgentHost by itself (an engine keeps exec'd processes when its
   * client goes): the AgentHost hands each run a lifeline socket (CONDUCTOR_RUN_LIFELINE in the
   * sandbox's env) and the run ends when its connection to it closes.
   */
  runLifeline: boolean;
  /** A sandbox outlives its AgentHost and recover() re-attaches it after a restart. */
  recover: boolean;
  /**
   * exec() binds ExecRequest.mounts for that exec alone. Without it a sandbox sees only the
   * mounts it was created with, and an exec's folders must lie under one of them.
   */
  execMounts: boolean;
}

/**
 * The engine behind a backend cannot be reached (its socket is gone, refuses, or does not
 * answer). Backends throw it (or a subclass) so the AgentHost can tell an engine that is away
 * from a call that failed, and report the agents lost rather than dead.
 */
export class EngineUnreachableError extends Error {
  override name = "EngineUnreachableError";
  /** Where the engine was looked for (a socket path), for messages. */
  readonly where: string;
  constructor(message: string, where: string, cause?: unknown) {
    super(message, { cause });
    this.where = where;
  }
}

/** Whether e says the engine cannot be reached (by class, or by name from another copy of it). */
export function isEngineUnreachable(e: unknown): e is EngineUnreachableError {
  return (
    e instanceof EngineUnreachableError ||
    (e instanceof Error && e.name === "EngineUnreachableError")
  );
}

/** A folder shared into the sandbox, at the same absolute path unless `sandboxPath` says otherwise. */
export interface Mount {
  hostPath: string;
  readOnly?: boolean;
  /**
   * Where it appears inside, when not at hostPath: honoured by the backends with
   * capabilities.image, in the mounts a sandbox is created with.
   */
  sandboxPath?: string;
}

/** What one agent's sandbox needs. */
export interface SandboxSpec {
  nodeId: string;
  agentId: string;
  /** The image to run (container backends); ignored by the process backend. */
  image: string;
  /** Folders shared at the same absolute path: the workspace, the CLI's config folder, sockets. */
  mounts: Mount[];
  /**
   * Environment of the sandbox itself (never secrets). Understood by the backends:
   * CONDUCTOR_MODEL_SOCKET (the model proxy: each run reaches it on a loopback port,
   * ANTHROPIC_BASE_URL), CONDUCTOR_RUN_LIFELINE (runtimes with capabilities.runLifeline: each
   * run holds a connection to it and ends when that closes).
   */
  env: Record<string, string>;
  labels: Record<string, string>;
  limits: {
    memoryBytes?: number;
    /** CPUs, fractional (1.5). */
    cpus?: number;
    pids?: number;
    /** Soft=hard limits, e.g. {nofile: 1024, nproc: 1024}. */
    ulimits?: Record<string, number>;
  };
  /** "none" (default), "host", or an engine network name. */
  network: string;
  /** uid:gid to run as; containers never run as root. */
  user: string;
}

/** An agent's sandbox as a backend knows it. */
export interface SandboxHandle {
  /** The engine's id (container id), or the agent folder for the process backend. */
  id: string;
  agentId: string;
  labels: Record<string, string>;
}

/** What inspect reads back from the engine. */
export interface SandboxStatus {
  running: boolean;
  /**
   * Running but frozen by its engine (`docker pause`, `podman pause`): no process can start in
   * it, and those in it make no progress, until it is unpaused.
   */
  paused?: boolean;
  exitCode?: number;
  /** The kernel's OOM killer ended it. */
  oomKilled: boolean;
  /** Why it stopped, in words (crash, OOM, killed), when not running. */
  reason?: string;
  limits: { memoryBytes?: number; cpus?: number; pids?: number };
  labels: Record<string, string>;
  user?: string;
  network?: string;
  readOnlyRootfs?: boolean;
  capDrop?: string[];
  noNewPrivileges?: boolean;
}

/** Resource use right now. */
export interface SandboxStats {
  memoryBytes: number;
  pids: number;
}

/**
 * One program to run in a sandbox; the environment is complete (nothing inherited). A
 * sandbox runs one exec at a time: when an exec ends, every process of the agent's user in
 * the sandbox ends with it.
 */
export interface ExecRequest {
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  /** "KEY=value" unique to this exec, in env too; lets the backend end strays. */
  marker?: string;
  /**
   * Folders bound at the same path for this exec alone (a task's worktree or host folder),
   * honoured by backends with capabilities.execMounts; others ignore them.
   */
  mounts?: Mount[];
}

/** How an exec ended. */
export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Set when it could not be started at all. */
  spawnError?: Error;
  /**
   * Set when the runtime ended it because something it needs outside it was lost (the process
   * runtime: its agent's model forwarder): why, for its task's error (an infrastructure one).
   */
  lost?: string;
  /**
   * Set when the runtime ended the whole sandbox to end what the run left (docker, podman: no
   * process could start in its container to do it, its pids limit full, say): the engine will
   * report the container's end, though perhaps not at once.
   */
  sandboxKilled?: boolean;
}

/** A running exec: output lines, its end, and a way to end it with everything it started. */
export interface Execution {
  onStdoutLine(fn: (line: string) => void): void;
  /**
   * Flow control for a consumer that falls behind: pause() stops reading its output (the
   * program blocks once its pipe is full), resume() reads on. kill() resumes by itself.
   */
  pause(): void;
  resume(): void;
  /** The last few KiB of stderr, for error messages. */
  stderrTail(): string;
  /** Resolves when it and everything it started have ended. */
  exited: Promise<ExitStatus>;
  /** Ends it (SIGTERM, SIGKILL after graceMs); resolves when it is gone. */
  kill(graceMs?: number): Promise<ExitStatus>;
}

/** The plugin contract every runtime implements. */
export interface RuntimeBackend {
  readonly name: string;
  fingerprint(): Promise<Fingerprint>;
  create(spec: SandboxSpec): Promise<SandboxHandle>;
  start(h: SandboxHandle): Promise<void>;
  exec(h: SandboxHandle, req: ExecRequest): Promise<Execution>;
  /** Stops the sandbox: SIGTERM, then SIGKILL after graceMs. */
  stop(h: SandboxHandle, graceMs: number): Promise<void>;
  /** Removes it and everything the engine keeps for it. Destroying a missing one is fine. */
  destroy(h: SandboxHandle): Promise<void>;
  inspect(h: SandboxHandle): Promise<SandboxStatus>;
  stats(h: SandboxHandle): Promise<SandboxStats>;
  /** Sandboxes carrying all these labels (to re-attach or reap after a restart). */
  list(labels: Record<string, string>): Promise<SandboxHandle[]>;
  /** Re-attaches to a sandbox found by list(); undefined if it is not usable any more. */
  recover(h: SandboxHandle): Promise<SandboxHandle | undefined>;
  /** Resolves when the sandbox stops by itself (crash, OOM, killed), with its status. */
  waitForExit(h: SandboxHandle, signal: AbortSignal): Promise<SandboxStatus>;
  /** Releases the engine connection. */
  close(): Promise<void>;
}

export const RUNTIME_METHODS = [
  "fingerprint",
  "create",
  "start",
  "exec",
  "stop",
  "destroy",
  "inspect",
  "stats",
  "list",
  "recover",
  "waitForExit",
  "close",
] as const;

/** The contract's members a candidate lacks (empty when it implements RuntimeBackend). */
export function missingMethods(x: unknown): string[] {
  if (typeof x !== "object" || x === null) return ["name", ...RUNTIME_METHODS];
  const o = x as Record<string, unknown>;
  const missing: string[] = RUNTIME_METHODS.filter((m) => typeof o[m] !== "function");
  if (typeof o["name"] !== "string") missing.unshift("name");
  return missing;
}
