import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import path from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";

/** ConfigError names the bad key and says what is wrong with it. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

const seconds = z.number().positive();

/** A list of strings; one given as a plain string (an environment variable) is comma-separated. */
const stringList = z.preprocess(
  (v) =>
    typeof v === "string"
      ? v
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean)
      : v,
  z.array(z.string().min(1)),
);

/** The configuration schema: the seed's sections plus runtime, storage and observability. */
const schema = z
  .object({
    orchestrator: z
      .object({
        num_agents: z.number().int().min(1).max(1000).default(3),
        /** Upper bound on tasks running at once across all agents. */
        max_workers: z.number().int().min(1).default(1000),
        node_id: z.string().min(1).default(hostname()),
        default_timeout_seconds: seconds.default(600),
        default_max_attempts: z.number().int().min(1).max(100).default(1),
        /** First retry waits this long; each further one doubles it (capped at 60 s). */
        retry_backoff_seconds: z.number().min(0).default(1),
        max_prompt_bytes: z.number().int().positive().default(100_000),
        /** AgentHost sockets to schedule onto; empty means the one in the socket folder. */
        agent_hosts: stringList.default([]),
        /**
         * An attempt whose AgentHost was lost is retried only once the host confirms it ended,
         * or after the host has been silent this long (a dead host's runs die with it).
         */
        unconfirmed_attempt_timeout_seconds: seconds.default(600),
        /**
         * Most bytes of agent output kept in one task's event history (1 MiB–1 GiB); beyond it
         * the oldest output events are deleted. State changes and results are always kept.
         */
        event_retention_bytes: z
          .number()
          .int()
          .min(1024 ** 2)
          .max(1024 ** 3)
          .default(64 * 1024 ** 2),
      })
      .strict()
      .prefault({}),
    agent: z
      .object({
        /** The Claude Code CLI; empty means the one from @anthropic-ai/claude-code. */
        claude_path: z.string().default(""),
        model: z.string().default(""),
        permission_mode: z
          .enum(["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk"])
          .default("acceptEdits"),
        allowed_tools: z
          .array(z.string().min(1))
          .default(["Read", "Write", "Edit", "MultiEdit", "Glob", "Grep", "LS"]),
        /** A run printing nothing for this long is ended and failed. */
        idle_timeout_seconds: seconds.default(300),
        /** A CLI still alive this long after its result line is ended (the result is kept). */
        result_grace_seconds: seconds.default(5),
        /** CLAUDE_CODE_MAX_RETRIES for the CLI's own API retries; -1 keeps the CLI's default (10). */
        max_api_retries: z.number().int().min(-1).max(100).default(-1),
        anthropic_api_key: z.string().default(""),
        anthropic_base_url: z.string().default(""),
        /** Memory limit of an agent container: bytes or a number with k, m or g. */
        container_memory: z
          .union([z.string(), z.number()])
          .transform((v, ctx) => parseBytes(v, ctx))
          .default(2 * 1024 ** 3),
        /** CPUs of an agent container (fractional). */
        container_cpu: z.coerce.number().positive().default(1),
        /** Most processes in an agent container. */
        container_pids: z.number().int().positive().default(512),
        /** Give every run the Broker's MCP tools (costs one small node process per run). */
        broker_tools: z.boolean().default(true),
        /** Workspaces are kept between tasks ("keep") or emptied before each task ("clean"). */
        workspace_policy: z.enum(["keep", "clean"]).default("keep"),
      })
      .strict()
      .prefault({}),
    communication: z
      .object({
        /** Folder of the services' Unix sockets. */
        socket_dir: z.string().min(1).default(".conductor/run"),
        /** The Orchestrator's socket; empty means orchestrator.sock in socket_dir. */
        socket_path: z.string().default(""),
        message_timeout: seconds.default(5),
      })
      .strict()
      .prefault({}),
    runtime: z
      .object({
        /** process, docker, podman, or a module (npm package or path) exporting a backend. */
        backend: z.string().min(1).default("process"),
        /** The agent image for container backends (built by deploy/agent-image). */
        image: z.string().min(1).default("conductor-agent:dev"),
        /** The engine's API socket; empty: DOCKER_HOST, then the engine's usual path. */
        socket: z.string().default(""),
        docker_host: z.string().default(""),
        xdg_runtime_dir: z.string().default(""),
        /**
         * How the process runtime contains agents: "bubblewrap" (default) runs every run in its
         * own sandbox; "none" runs agents as plain local processes with this service's user and
         * view of the machine — an explicit, unsafe opt-out for hosts where no sandbox can be made.
         */
        process_sandbox: z.enum(["bubblewrap", "none"]).default("bubblewrap"),
        /**
         * Host folders every process-runtime sandbox sees, read-only, besides the system
         * (/usr, /etc, …), the CLI's folder and node: e.g. toolchains under /opt.
         */
        read_only_paths: stringList.default([]),
        /** none (default), host, or an engine network name. */
        network: z.string().min(1).default("none"),
        /**
         * uid:gid of the first agent; agent N runs as uid+N-1:gid+N-1, each a user of its own
         * (containers and process sandboxes alike, when the AgentHost is root). Never root.
         * The default is a range no person normally logs in as; `up` warns when one does.
         */
        user: z
          .string()
          .regex(/^[1-9][0-9]*(:[1-9][0-9]*)?$/, "must be a non-root uid[:gid], e.g. 61000:61000")
          .default("61000:61000"),
        /** Soft=hard ulimits for agent containers, e.g. {nofile: 1024, nproc: 1024} (Podman needs them on some hosts). */
        ulimits: z.record(z.string(), z.number().int().positive()).default({}),
        /** How long a stopping container gets before SIGKILL. */
        stop_grace_seconds: z.number().min(0).default(5),
      })
      .strict()
      .prefault({}),
    storage: z
      .object({ data_dir: z.string().min(1).default(".conductor/data") })
      .strict()
      .prefault({}),
    broker: z
      .object({
        /** The Broker's socket; empty means broker.sock in socket_dir. */
        socket_path: z.string().default(""),
        /** A delivered message not acknowledged within this is delivered again. */
        ack_timeout_seconds: seconds.default(30),
        /** Most unacknowledged messages one inbox holds, from everyone; more is RESOURCE_EXHAUSTED. */
        inbox_limit: z.number().int().min(1).max(1_000_000).default(1000),
        /**
         * Most unacknowledged messages one agent may have in another's inbox (its direct
         * messages, requests and topic copies), so no agent can silence others; unset means a
         * tenth of inbox_limit (at least 1). Replies and the Orchestrator's don't count.
         */
        sender_share: z.number().int().min(1).max(1_000_000).optional(),
        /**
         * Places of every inbox that only replies and the Orchestrator's messages may take:
         * agents' other messages fill at most inbox_limit - reply_reserve. Unset means a tenth
         * of inbox_limit.
         */
        reply_reserve: z.number().int().min(0).max(1_000_000).optional(),
        /** A message nobody acknowledges is dropped after this long (and a message's TTL can't be longer). */
        ttl_seconds: seconds.default(86_400),
        max_payload_bytes: z.number().int().min(1).max(3_000_000).default(65_536),
        /** How long Request waits for a reply when the call names no timeout. */
        request_timeout_seconds: seconds.default(60),
      })
      .strict()
      .prefault({})
      .transform(brokerShares),
    observability: z
      .object({
        log_level: z.enum(["debug", "info", "warn", "error"]).default("info"),
        /** Address the /metrics endpoints listen on; 0.0.0.0 to let other hosts scrape. */
        metrics_host: z.string().min(1).default("127.0.0.1"),
        /** /metrics of the Orchestrator (and of `conductor up`); 0 picks a free port, -1 turns it off. */
        metrics_port: z.number().int().min(-1).max(65535).default(9464),
        /** /metrics of an AgentHost run on its own (`conductor agent-host`); 0 free, -1 off. */
        agent_host_metrics_port: z.number().int().min(-1).max(65535).default(9465),
        /** /metrics of a Broker run on its own (`conductor broker`); 0 free, -1 off. */
        broker_metrics_port: z.number().int().min(-1).max(65535).default(9466),
      })
      .strict()
      .prefault({}),
  })
  .strict();

/**
 * Fills in the Broker's sender_share and reply_reserve (a tenth of inbox_limit when unset)
 * and checks they leave every agent room: reply_reserve below inbox_limit, sender_share
 * within what agents may fill.
 */
function brokerShares<
  B extends {
    inbox_limit: number;
    sender_share?: number | undefined;
    reply_reserve?: number | undefined;
  },
>(b: B, ctx: z.RefinementCtx): B & { sender_share: number; reply_reserve: number } {
  const limit = b.inbox_limit;
  const reply_reserve = b.reply_reserve ?? Math.floor(limit / 10);
  const sender_share = b.sender_share ?? Math.max(1, Math.floor(limit / 10));
  if (reply_reserve >= limit) {
    ctx.addIssue({
      code: "custom",
      path: ["reply_reserve"],
      message: `must be less than broker.inbox_limit (${limit}), or agents could send nothing`,
    });
  } else if (sender_share > limit - reply_reserve) {
    ctx.addIssue({
      code: "custom",
      path: ["sender_share"],
      message: `must be at most broker.inbox_limit - broker.reply_reserve (${limit - reply_reserve}), the places agents may fill`,
    });
  }
  return { ...b, sender_share, reply_reserve };
}

/** The validated configuration, with defaults applied and paths made absolute. */
export type Config = z.infer<typeof schema>;

/** Where configuration comes from; nothing else in the code reads process.env. */
export interface ConfigSources {
  /** A YAML file; missing keys take defaults. */
  file?: string | undefined;
  /** Environment: CONDUCTOR_<SECTION>_<KEY> overrides a key; ANTHROPIC_* feed agent.*. */
  env?: Record<string, string | undefined>;
  /** Flag values by dotted key, e.g. {"orchestrator.num_agents": 3}. They win over everything. */
  flags?: Record<string, unknown>;
  /** Relative paths are resolved against this folder (default: the process's cwd). */
  cwd?: string;
}

const SECTIONS = Object.keys(schema.shape) as (keyof Config)[];

/** Reads, merges and validates the configuration once, at start. */
export function loadConfig(sources: ConfigSources = {}): Config {
  const raw: Record<string, Record<string, unknown>> = {};
  if (sources.file) mergeInto(raw, readYaml(sources.file), sources.file);
  const env = sources.env ?? {};
  if (env["ANTHROPIC_API_KEY"]) set(raw, "agent.anthropic_api_key", env["ANTHROPIC_API_KEY"]);
  if (env["ANTHROPIC_BASE_URL"]) set(raw, "agent.anthropic_base_url", env["ANTHROPIC_BASE_URL"]);
  if (env["DOCKER_HOST"]) set(raw, "runtime.docker_host", env["DOCKER_HOST"]);
  if (env["XDG_RUNTIME_DIR"]) set(raw, "runtime.xdg_runtime_dir", env["XDG_RUNTIME_DIR"]);
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith("CONDUCTOR_") || value === undefined) continue;
    const rest = name.slice("CONDUCTOR_".length).toLowerCase();
    const section = SECTIONS.find((s) => rest.startsWith(`${s}_`));
    if (!section) continue;
    set(raw, `${section}.${rest.slice(section.length + 1)}`, parseScalar(value), name);
  }
  for (const [key, value] of Object.entries(sources.flags ?? {})) {
    if (value !== undefined) set(raw, key, value);
  }
  const result = schema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const key = issue.path.join(".");
    const unknown =
      issue.code === "unrecognized_keys" ? ` (unknown key ${issue.keys.join(", ")})` : "";
    throw new ConfigError(
      `configuration key "${key || "(top level)"}": ${issue.message}${unknown}`,
    );
  }
  return resolvePaths(result.data, sources.cwd ?? process.cwd());
}

function resolvePaths(config: Config, cwd: string): Config {
  const c = config.communication;
  c.socket_dir = path.resolve(cwd, c.socket_dir);
  c.socket_path = c.socket_path
    ? path.resolve(cwd, c.socket_path)
    : path.join(c.socket_dir, "orchestrator.sock");
  const b = config.broker;
  b.socket_path = b.socket_path
    ? path.resolve(cwd, b.socket_path)
    : path.join(c.socket_dir, "broker.sock");
  config.storage.data_dir = path.resolve(cwd, config.storage.data_dir);
  config.runtime.read_only_paths = config.runtime.read_only_paths.map((p) => path.resolve(cwd, p));
  if (config.agent.claude_path)
    config.agent.claude_path = path.resolve(cwd, config.agent.claude_path);
  return config;
}

function readYaml(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (cause) {
    throw new ConfigError(`cannot read configuration file ${file}: ${(cause as Error).message}`, {
      cause,
    });
  }
  try {
    return parseYaml(text) ?? {};
  } catch (cause) {
    throw new ConfigError(
      `configuration file ${file} is not valid YAML: ${(cause as Error).message}`,
      {
        cause,
      },
    );
  }
}

function mergeInto(raw: Record<string, Record<string, unknown>>, doc: unknown, origin: string) {
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw new ConfigError(`configuration file ${origin} must be a mapping of sections`);
  }
  for (const [section, body] of Object.entries(doc)) {
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw new ConfigError(`configuration key "${section}": must be a mapping`);
    }
    for (const [key, value] of Object.entries(body as Record<string, unknown>))
      set(raw, `${section}.${key}`, value);
  }
}

function set(
  raw: Record<string, Record<string, unknown>>,
  dotted: string,
  value: unknown,
  origin = dotted,
) {
  const [section, key, ...more] = dotted.split(".");
  if (!section || !key || more.length > 0) {
    throw new ConfigError(`configuration key "${origin}": expected <section>.<key>`);
  }
  (raw[section] ??= {})[key] = value;
}

/** "2g", "512m", "1024k" or a plain number of bytes. */
function parseBytes(v: string | number, ctx: z.RefinementCtx): number {
  if (typeof v === "number" && Number.isInteger(v) && v > 0) return v;
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]?)b?$/i.exec(String(v).trim());
  if (!m) {
    ctx.addIssue({ code: "custom", message: `"${v}" is not a size; use bytes or e.g. 512m, 2g` });
    return z.NEVER;
  }
  const unit = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[
    m[2]!.toLowerCase() as "" | "k" | "m" | "g"
  ];
  return Math.round(Number(m[1]) * unit);
}

/** Environment values are YAML scalars ("3" is a number); a comma list becomes an array. */
function parseScalar(value: string): unknown {
  try {
    const parsed: unknown = parseYaml(value);
    if (typeof parsed === "string" && parsed.includes(","))
      return parsed.split(",").map((s) => s.trim());
    return parsed ?? "";
  } catch {
    return value;
  }
}
