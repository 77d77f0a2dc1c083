import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { TaskSpecSchema } from "../../gen/conductor/v1/task_pb.js";
import { validateSpec } from "../orchestrator/validate.ts";
import { DEFAULT_SOCKET_DIR, NON_CONFIG_VARIABLES } from "./config-env.ts";
import { parseHostPort } from "./host-port.ts";
import { DEFAULT_PRICES } from "./prices.ts";

/**
 * ConfigError lists every problem of a configuration at once, each naming the bad key and where
 * its value came from (the environment variable, the file or the flag).
 */
export class ConfigError extends Error {
  override name = "ConfigError";
  /** One line per problem. */
  readonly problems: string[];
  constructor(problems: string | string[], options?: ErrorOptions) {
    const list = typeof problems === "string" ? [problems] : problems;
    super(
      list.length === 1
        ? list[0]!
        : `the configuration has ${list.length} problems:\n${list.map((p) => `  - ${p}`).join("\n")}`,
      options,
    );
    this.problems = list;
  }
}

const MINUTE = 60;
const HOUR = 3600;
const DAY = 86_400;

/** "3600 s (1 hour)": a bound as a person reads it. */
function span(s: number): string {
  if (s % DAY === 0) return `${s} s (${s / DAY} day${s === DAY ? "" : "s"})`;
  if (s % HOUR === 0) return `${s} s (${s / HOUR} hour${s === HOUR ? "" : "s"})`;
  if (s % MINUTE === 0) return `${s} s (${s / MINUTE} minutes)`;
  return `${s} s`;
}

/**
 * A duration in seconds, above 0 and at most `max` (every duration has an upper bound: Node's
 * timers overflow above 2^31-1 ms, about 24.8 days, and fire at once).
 */
const seconds = (max: number) =>
  z
    .number()
    .positive("must be more than 0")
    .max(max, `must be at most ${span(max)}`);

/** A whole number from `min` to `max`, with the bound said in words. */
const count = (min: number, max: number) =>
  z
    .number()
    .int("must be a whole number")
    .min(min, `must be at least ${min}`)
    .max(max, `must be at most ${max}`);

/**
 * A list of strings; one given as a plain string (an environment variable) is comma-separated,
 * and a blank one is the empty list. An empty entry (",,") is refused, not dropped.
 */
const stringList = z.preprocess(
  (v) => (typeof v === "string" ? (v.trim() === "" ? [] : v.split(",").map((s) => s.trim())) : v),
  z.array(z.string()).superRefine((list, ctx) => {
    const at = list.findIndex((s) => s.trim() === "");
    if (at !== -1)
      ctx.addIssue({
        code: "custom",
        message: `entry ${at + 1} of ${list.length} is empty: name each entry, separated by commas`,
      });
  }),
);
/** A list of at most `max` entries. */
const listOf = (max: number) =>
  stringList.pipe(z.array(z.string()).max(max, `must have at most ${max} entries`));

/**
 * Checks a default of a TaskSpec field (agent.model, agent.allowed_tools) with the very rule
 * SubmitTask applies to that field, so that a configured default is one a task could name.
 */
function likeSpecField(field: "model" | "allowedTools") {
  return (value: string | string[], ctx: z.RefinementCtx) => {
    try {
      validateSpec(create(TaskSpecSchema, { prompt: "-", [field]: value }), {
        maxPromptBytes: 1,
      });
    } catch (e) {
      if (!(e instanceof ConnectError)) throw e;
      ctx.addIssue({ code: "custom", message: e.rawMessage.replace(/^spec\./, "") });
    }
  };
}

/**
 * A node id names this Conductor's containers and processes, so it is what a container name
 * may hold: 1–63 letters, digits, ".", "_" or "-", starting with a letter or digit.
 */
/** A `host:port` key (listen, join), empty when unset. */
const hostPortKey = () =>
  z
    .string()
    .superRefine((v, ctx) => {
      if (v === "") return;
      try {
        parseHostPort(v);
      } catch (e) {
        ctx.addIssue({ code: "custom", message: (e as Error).message });
      }
    })
    .default("");

/** A node label's key: what Kubernetes allows in a label name, prefix included. */
const LABEL_KEY = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$/;
const LABEL_KEY_RULE =
  "a label key is 1 to 128 letters, digits, '.', '_', '/' or '-', starting and ending with a letter or digit";

const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** The host's name as a node id (characters a node id may not hold become "-"). */
function defaultNodeId(): string {
  const id = hostname()
    .replace(/[^A-Za-z0-9._-]/g, "-")
    .replace(/^[^A-Za-z0-9]+/, "")
    .slice(0, 63);
  return id || "conductor";
}

/** The configuration schema: the seed's sections plus runtime, storage and observability. */
const schema = z
  .object({
    orchestrator: z
      .object({
        num_agents: count(1, 1000).default(3),
        /** Upper bound on tasks running at once across all agents. */
        max_workers: count(1, 100_000).default(1000),
        node_id: z
          .string()
          .regex(
            NODE_ID,
            `must be 1 to 63 letters, digits, ".", "_" or "-", starting with a letter or digit (it goes into container names)`,
          )
          .default(defaultNodeId()),
        default_timeout_seconds: seconds(7 * DAY).default(600),
        default_max_attempts: count(1, 100).default(1),
        /** First retry waits this long; each further one doubles it (capped at 60 s). */
        retry_backoff_seconds: z
          .number()
          .min(0, "must be 0 or more")
          .max(HOUR, `must be at most ${span(HOUR)}`)
          .default(1),
        max_prompt_bytes: count(1, 131_071).default(100_000),
        /** AgentHost sockets to schedule onto; empty means agent-host.sock in the socket folder. */
        agent_hosts: listOf(1000).default([]),
        /**
         * An attempt whose AgentHost was lost is retried only once the host confirms it ended,
         * or after the host has been silent this long (a dead host's runs die with it).
         */
        unconfirmed_attempt_timeout_seconds: seconds(7 * DAY).default(600),
        /**
         * Most bytes of agent output kept in one task's event history; beyond it the oldest
         * output events are deleted. State changes and results are always kept.
         */
        event_retention_bytes: count(1024 ** 2, 1024 ** 3).default(64 * 1024 ** 2),
        /**
         * A joined node's lease: a node not heard from for this long is lost (its attempts end
         * FAILED, "node NAME lost", and are retried elsewhere). It ends its own runs after half.
         */
        node_lease_seconds: seconds(HOUR).default(15),
        /**
         * Fleet-wide admission control: while what the tasks a limit covers spent in its window
         * (the last hour) is at or over usd_per_hour, new tasks it covers stay QUEUED, saying why.
         * A limit without labels covers every task; one with labels, the tasks whose labels
         * include all of them. window_seconds shortens or lengthens the hour (tests).
         */
        spend_limits: z
          .array(
            z.strictObject({
              usd_per_hour: z
                .number()
                .positive("must be more than 0")
                .max(1_000_000, "must be at most 1000000"),
              labels: z
                .record(z.string().min(1).max(128), z.string().max(1024))
                .refine((r) => Object.keys(r).length <= 64, "must have at most 64 labels")
                .default({}),
              window_seconds: seconds(DAY).default(HOUR),
            }),
          )
          .max(100, "must have at most 100 entries")
          .superRefine((limits, ctx) => {
            const seen = new Map<string, number>();
            limits.forEach((l, i) => {
              const key = JSON.stringify(Object.entries(l.labels).sort());
              const first = seen.get(key);
              if (first !== undefined)
                ctx.addIssue({
                  code: "custom",
                  path: [i, "labels"],
                  message: `entry ${i + 1} has the labels of entry ${first + 1}: one limit per set of labels`,
                });
              else seen.set(key, i);
            });
          })
          .default([]),
        /**
         * Files of custom task types, registered after the built-ins: `.yaml`/`.yml` declare one,
         * `.js`/`.mjs`/`.ts` modules export one as their default.
         */
        task_types: listOf(100)
          .superRefine((files, ctx) => {
            for (const f of files)
              if (!/\.(ya?ml|m?js|ts)$/i.test(f))
                ctx.addIssue({
                  code: "custom",
                  message: `${f} is neither YAML (.yaml, .yml) nor a module (.js, .mjs, .ts)`,
                });
          })
          .default([]),
      })
      .strict()
      .prefault({}),
    agent: z
      .object({
        /** The Claude Code CLI; empty means the one from @anthropic-ai/claude-code. */
        claude_path: z.string().default(""),
        /** The model when a task names none; empty: the CLI's default. */
        model: z.string().superRefine(likeSpecField("model")).default(""),
        permission_mode: z
          .enum(["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk"])
          .default("acceptEdits"),
        allowed_tools: listOf(100)
          .superRefine(likeSpecField("allowedTools"))
          .default(["Read", "Write", "Edit", "MultiEdit", "Glob", "Grep", "LS"]),
        /** A run printing nothing for this long is ended and failed. */
        idle_timeout_seconds: seconds(DAY).default(300),
        /**
         * A run is ended at its result line (the result is kept): what of it ignores SIGTERM is
         * killed this long after.
         */
        result_grace_seconds: seconds(HOUR).default(2),
        /** CLAUDE_CODE_MAX_RETRIES for the CLI's own API retries; -1 keeps the CLI's default (10). */
        max_api_retries: count(-1, 100).default(-1),
        /**
         * USD per million input and output tokens, by model id or id prefix (`default` for the
         * rest): what the model proxy prices metered usage and budgets with.
         */
        prices: z
          .record(
            z.string().min(1).max(256),
            z.strictObject({
              input: z.number().min(0).max(1_000_000),
              output: z.number().min(0).max(1_000_000),
            }),
          )
          .superRefine((v, ctx) => {
            if (Object.keys(v).length > 256)
              ctx.addIssue({ code: "custom", message: "at most 256 models" });
          })
          .default(DEFAULT_PRICES),
        anthropic_api_key: z.string().default(""),
        anthropic_base_url: z.string().default(""),
        /** Memory limit of an agent container: bytes or a number with k, m or g. */
        container_memory: z
          .union([z.string(), z.number()])
          .transform((v, ctx) => parseBytes(v, ctx))
          .default(2 * 1024 ** 3),
        /** CPUs of an agent container (fractional). */
        container_cpu: z.coerce
          .number()
          .positive("must be more than 0")
          .max(1024, "must be at most 1024")
          .default(1),
        /** Most processes in an agent container. */
        container_pids: count(1, 4_194_304).default(512),
        /** Give every run the Broker's MCP tools (costs one small node process per run). */
        broker_tools: z.boolean().default(true),
        /** Workspaces are kept between tasks ("keep") or emptied before each task ("clean"). */
        workspace_policy: z.enum(["keep", "clean"]).default("keep"),
        /**
         * Host folders a task's host_path workspace may be (or be under), absolute; empty (the
         * default) refuses every host_path task until an operator allows a folder.
         */
        allowed_host_paths: listOf(100)
          .superRefine((paths, ctx) => {
            for (const p of paths)
              if (!path.isAbsolute(p))
                ctx.addIssue({ code: "custom", message: `${p} is not absolute` });
          })
          .default([]),
        /** Author and committer of the commits that hold a task's work on its result branch. */
        git_author_name: z.string().min(1).max(256).default("Conductor"),
        git_author_email: z.string().min(1).max(256).default("conductor@localhost"),
        /** A task's check that names no timeout of its own is ended after this long. */
        check_timeout_seconds: seconds(DAY).default(600),
        /**
         * A file of a task's worktree larger than this is left out of its commit (named in the
         * result as not committed). GitHub refuses files over 100 MiB in a push.
         */
        max_commit_file_bytes: count(1024 ** 2, 1024 ** 4).default(100 * 1024 ** 2),
        /**
         * The most a task's commit takes in all (its new and changed files' sizes): the largest
         * are left out until the rest fits, at most 1,000 of them; a change that needs more
         * left out is not committed at all. GitHub refuses pushes over 2 GiB.
         */
        max_change_bytes: count(1024 ** 2, 1024 ** 4).default(2 * 1024 ** 3),
        /** Each git command on a task's repository (fetch, add, commit, push) is ended after this. */
        git_timeout_seconds: seconds(DAY).min(1, "must be at least 1").default(600),
      })
      .strict()
      .prefault({}),
    communication: z
      .object({
        /** Folder of the services' Unix sockets. */
        socket_dir: z.string().min(1).default(DEFAULT_SOCKET_DIR),
        /** The Orchestrator's socket; empty means orchestrator.sock in socket_dir. */
        socket_path: z.string().default(""),
        message_timeout: seconds(HOUR).default(5),
        /**
         * host:port to also listen on TCP with mutual TLS (tls.*), e.g. 0.0.0.0:7443; empty (the
         * default) listens on the Unix socket only. Port 0 picks a free port.
         */
        listen: hostPortKey(),
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
        read_only_paths: listOf(100).default([]),
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
        ulimits: z.record(z.string(), count(1, 4_194_304)).default({}),
        /** How long a stopping container gets before SIGKILL. */
        stop_grace_seconds: z
          .number()
          .min(0, "must be 0 or more")
          .max(HOUR, `must be at most ${span(HOUR)}`)
          .default(5),
      })
      .strict()
      .prefault({}),
    /** Mutual TLS across nodes: PEM files made by `conductor certs`. */
    tls: z
      .object({
        ca_file: z.string().default(""),
        cert_file: z.string().default(""),
        key_file: z.string().default(""),
      })
      .strict()
      .prefault({}),
    agent_host: z
      .object({
        /** host:port of an Orchestrator's TCP listener to join (dialling out, mutual TLS). */
        join: hostPortKey(),
        /**
         * host:port of a Broker on another machine (its broker.listen), for this joined node's
         * agents; empty: the Broker on this machine (its socket and the shared broker.key).
         */
        broker: hostPortKey(),
        /** This node's labels, which a task's node_selector must match (at most 64). */
        labels: z
          .record(z.string().regex(LABEL_KEY, LABEL_KEY_RULE), z.string().max(256))
          .refine((r) => Object.keys(r).length <= 64, "must have at most 64 labels")
          .default({}),
        /** CPUs this node offers tasks; 0 (the default) means the machine's. */
        cpus: z.coerce.number().min(0, "must be 0 or more").max(100_000).default(0),
        /** Memory this node offers tasks (bytes, or a number with k, m or g); 0: the machine's. */
        memory: z
          .union([z.string(), z.number()])
          .transform((v, ctx) => (v === 0 || v === "0" ? 0 : parseBytes(v, ctx)))
          .default(0),
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
        /** host:port to also listen on TCP with mutual TLS (tls.*), for joined nodes' agents. */
        listen: hostPortKey(),
        /** A delivered message not acknowledged within this is delivered again. */
        ack_timeout_seconds: seconds(DAY).default(30),
        /** Most unacknowledged messages one inbox holds, from everyone; more is RESOURCE_EXHAUSTED. */
        inbox_limit: count(1, 1_000_000).default(1000),
        /**
         * Most unacknowledged messages one agent may have in another's inbox (its direct
         * messages, requests and topic copies), so no agent can silence others; unset means a
         * tenth of inbox_limit (at least 1). Replies and the Orchestrator's don't count.
         */
        sender_share: count(1, 1_000_000).optional(),
        /**
         * Places of every inbox that only replies and the Orchestrator's messages may take:
         * agents' other messages fill at most inbox_limit - reply_reserve. Unset means a tenth
         * of inbox_limit.
         */
        reply_reserve: count(0, 1_000_000).optional(),
        /** A message nobody acknowledges is dropped after this long (and a message's TTL can't be longer). */
        ttl_seconds: seconds(20 * DAY).default(86_400),
        max_payload_bytes: count(1, 3_000_000).default(65_536),
        /** How long Request waits for a reply when the call names no timeout. */
        request_timeout_seconds: seconds(HOUR).default(60),
      })
      .strict()
      .prefault({})
      .transform(brokerShares),
    observability: z
      .object({
        log_level: z.enum(["debug", "info", "warn", "error"]).default("info"),
        /** Logs on stderr: "text" for a person, "json" lines; "auto" is text on a terminal. */
        log_format: z.enum(["auto", "text", "json"]).default("auto"),
        /** Address the /metrics endpoints listen on; 0.0.0.0 to let other hosts scrape. */
        metrics_host: z.string().min(1).default("127.0.0.1"),
        /** /metrics of the Orchestrator (and of `conductor up`); 0 picks a free port, -1 turns it off. */
        metrics_port: count(-1, 65535).default(9464),
        /** /metrics of an AgentHost run on its own (`conductor agent-host`); 0 free, -1 off. */
        agent_host_metrics_port: count(-1, 65535).default(9465),
        /** /metrics of a Broker run on its own (`conductor broker`); 0 free, -1 off. */
        broker_metrics_port: count(-1, 65535).default(9466),
        /**
         * The web console of the Orchestrator (and of `conductor up`): host:port (port 0 picks a
         * free one), or "-1" for none. On loopback it asks for the token its ready line prints;
         * on any other address it needs tls.* and clients' certificates (mutual TLS).
         */
        console: z
          .preprocess((v) => (v === -1 ? "-1" : v), z.string())
          .superRefine((v, ctx) => {
            if (v === "-1") return;
            try {
              parseHostPort(v);
            } catch (e) {
              ctx.addIssue({
                code: "custom",
                message: `${(e as Error).message}, or "-1" for none`,
              });
            }
          })
          .default("127.0.0.1:8470"),
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
  /**
   * Environment: CONDUCTOR_<SECTION>_<KEY> overrides a key (any other CONDUCTOR_* name but
   * NON_CONFIG_VARIABLES is refused); ANTHROPIC_* feed agent.*.
   */
  env?: Record<string, string | undefined>;
  /** Flag values by dotted key, e.g. {"orchestrator.num_agents": 3}. They win over everything. */
  flags?: Record<string, unknown>;
  /** The flag that set a dotted key, e.g. {"orchestrator.num_agents": "--agents"}, for errors. */
  flagNames?: Record<string, string>;
  /** Relative paths are resolved against this folder (default: the process's cwd). */
  cwd?: string;
}

const SECTIONS = Object.keys(schema.shape) as (keyof Config)[];

/** Keys whose values an error never quotes. */
const SECRET_KEYS = new Set(["agent.anthropic_api_key"]);

/** Every configuration key, dotted ("agent.model"), in schema order. */
export function configKeys(): string[] {
  return SECTIONS.flatMap((section) => {
    const inner = unwrap(schema.shape[section]);
    return Object.keys(inner.shape).map((k) => `${section}.${k}`);
  });
}

function unwrap(t: unknown): { shape: Record<string, unknown> } {
  // A section is an object schema behind .prefault() and, for broker, .transform().
  let cur = t as { shape?: Record<string, unknown>; def?: { innerType?: unknown; in?: unknown } };
  while (!cur.shape) cur = (cur.def?.innerType ?? cur.def?.in) as typeof cur;
  return cur as { shape: Record<string, unknown> };
}

/** The environment variable of a key: agent.model → CONDUCTOR_AGENT_MODEL. */
export function envName(key: string): string {
  return `CONDUCTOR_${key.replace(".", "_").toUpperCase()}`;
}

/** Where a raw value came from, for error messages. */
type Origins = Map<string, string>;

/** Reads, merges and validates the configuration once, at start; every problem is reported. */
export function loadConfig(sources: ConfigSources = {}): Config {
  const raw: Record<string, Record<string, unknown>> = {};
  const origins: Origins = new Map();
  const problems: string[] = [];
  if (sources.file) mergeInto(raw, origins, readYaml(sources.file), sources.file, problems);
  const env = sources.env ?? {};
  const fromEnv = (name: string, key: string, value: unknown) => {
    set(raw, key, value);
    const shown = SECRET_KEYS.has(key) ? "" : `=${quote(String(env[name]))}`;
    origins.set(key, `${name}${shown}`);
  };
  if (env["ANTHROPIC_API_KEY"])
    fromEnv("ANTHROPIC_API_KEY", "agent.anthropic_api_key", env["ANTHROPIC_API_KEY"]);
  if (env["ANTHROPIC_BASE_URL"])
    fromEnv("ANTHROPIC_BASE_URL", "agent.anthropic_base_url", env["ANTHROPIC_BASE_URL"]);
  if (env["DOCKER_HOST"]) fromEnv("DOCKER_HOST", "runtime.docker_host", env["DOCKER_HOST"]);
  if (env["XDG_RUNTIME_DIR"])
    fromEnv("XDG_RUNTIME_DIR", "runtime.xdg_runtime_dir", env["XDG_RUNTIME_DIR"]);
  const known = new Map(configKeys().map((k) => [envName(k), k]));
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith("CONDUCTOR_") || value === undefined || NON_CONFIG_VARIABLES.has(name))
      continue;
    const key = known.get(name);
    if (key) fromEnv(name, key, parseScalar(value));
    else problems.push(unknownVariable(name, [...known.keys()]));
  }
  for (const [key, value] of Object.entries(sources.flags ?? {})) {
    if (value === undefined) continue;
    set(raw, key, value);
    const flag = sources.flagNames?.[key];
    origins.set(key, flag ? `${flag} ${quote(JSON.stringify(value))}` : "a flag");
  }
  const result = schema.safeParse(raw);
  if (!result.success) problems.push(...result.error.issues.flatMap((i) => describe(i, origins)));
  if (problems.length > 0) throw new ConfigError(problems);
  return resolvePaths(result.data!, sources.cwd ?? process.cwd());
}

/** One line per bad key of a zod issue (an unknown-keys issue names several). */
function describe(issue: z.core.$ZodIssue, origins: Origins): string[] {
  const at = issue.path.map(String);
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((k) => {
      const key = [...at, k].join(".");
      const what =
        at.length === 0 ? `unknown section (sections: ${SECTIONS.join(", ")})` : "unknown key";
      return `${origin(origins, key)}configuration key "${key}": ${what}${suggest(key)}`;
    });
  }
  const key = at.join(".");
  return [`${origin(origins, key)}configuration key "${key || "(top level)"}": ${issue.message}`];
}

function origin(origins: Origins, key: string): string {
  const o = origins.get(key) ?? origins.get(key.split(".")[0]!);
  return o ? `${o}: ` : "";
}

function suggest(key: string): string {
  const near = closest(key, key.includes(".") ? configKeys() : SECTIONS);
  return near ? `; did you mean "${near}"?` : "";
}

function unknownVariable(name: string, known: string[]): string {
  const near = closest(name, known);
  return (
    `environment variable ${name} is not a configuration key` +
    (near ? `; did you mean ${near}?` : "") +
    " (keys are CONDUCTOR_<SECTION>_<KEY>, e.g. CONDUCTOR_ORCHESTRATOR_NUM_AGENTS; unset it, or see `conductor config print`)"
  );
}

/** The candidate nearest to `word` by edit distance, if it is near enough to be a typo. */
function closest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(word.length / 4)) + 1;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++)
      cur[j] = Math.min(
        prev[j]! + 1,
        cur[j - 1]! + 1,
        prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    prev = cur;
  }
  return prev[b.length]!;
}

/** A value as an error shows it: at most 40 characters. */
function quote(v: string): string {
  return v.length > 40 ? `${v.slice(0, 40)}…` : v;
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
  const o = config.orchestrator;
  o.agent_hosts = o.agent_hosts.map((p) => path.resolve(cwd, p));
  o.task_types = o.task_types.map((p) => path.resolve(cwd, p));
  const t = config.tls;
  for (const k of ["ca_file", "cert_file", "key_file"] as const)
    if (t[k]) t[k] = path.resolve(cwd, t[k]);
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

function mergeInto(
  raw: Record<string, Record<string, unknown>>,
  origins: Origins,
  doc: unknown,
  file: string,
  problems: string[],
) {
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw new ConfigError(`configuration file ${file} must be a mapping of sections`);
  }
  for (const [section, body] of Object.entries(doc)) {
    origins.set(section, file);
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      problems.push(`${file}: configuration key "${section}": must be a mapping of keys`);
      continue;
    }
    for (const [key, value] of Object.entries(body as Record<string, unknown>)) {
      set(raw, `${section}.${key}`, value);
      origins.set(`${section}.${key}`, file);
    }
  }
}

function set(raw: Record<string, Record<string, unknown>>, dotted: string, value: unknown) {
  const [section, key, ...more] = dotted.split(".");
  if (!section || !key || more.length > 0) {
    throw new ConfigError(`configuration key "${dotted}": expected <section>.<key>`);
  }
  (raw[section] ??= {})[key] = value;
}

const MAX_CONTAINER_MEMORY = 1024 ** 4;

/** "2g", "512m", "1024k" or a plain number of bytes, from 4 MiB to 1 TiB. */
function parseBytes(v: string | number, ctx: z.RefinementCtx): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]?)b?$/i.exec(String(v).trim());
  if (!m) {
    ctx.addIssue({ code: "custom", message: `"${v}" is not a size; use bytes or e.g. 512m, 2g` });
    return z.NEVER;
  }
  const unit = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[
    m[2]!.toLowerCase() as "" | "k" | "m" | "g"
  ];
  const bytes = Math.round(Number(m[1]) * unit);
  if (bytes < 4 * 1024 ** 2 || bytes > MAX_CONTAINER_MEMORY) {
    ctx.addIssue({ code: "custom", message: `must be from 4m to 1024g, got "${v}"` });
    return z.NEVER;
  }
  return bytes;
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
