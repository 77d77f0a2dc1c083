import { timingSafeEqual } from "node:crypto";
import { mkdirSync, rmSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import path from "node:path";
import type { Duplex } from "node:stream";
import { MCP_PATH, type McpHandler } from "../broker/mcp-http.ts";
import { socketForAgent } from "../shared/agent-files.ts";
import type { Logger } from "../shared/log.ts";
import { DEFAULT_PRICES, type ModelPrice } from "../shared/prices.ts";
import { CallMeter } from "./usage-meter.ts";

/** Tokens the proxy saw in the model's answers. */
export interface MeteredUsage {
  /** Input tokens not read from nor written to the prompt cache (the API's input_tokens). */
  inputTokens: number;
  outputTokens: number;
  /** Input tokens written to the prompt cache (cache_creation_input_tokens). */
  cacheCreationInputTokens: number;
  /** Input tokens read from the prompt cache (cache_read_input_tokens). */
  cacheReadInputTokens: number;
  requests: number;
  /** HTTP status of the last answer that was an error (4xx, 5xx; 502 when unreachable), else 0. */
  errorStatus: number;
  /** US dollars the metered tokens cost, priced per model by the price table. */
  costUsd: number;
  /** Why a request was refused for the budget ("$0.0120 of $0.0100"), else "". */
  budgetExhausted: string;
}

/** Nothing metered yet (what take() gives after a take()). */
export const NO_USAGE: Readonly<MeteredUsage> = {
  inputTokens: 0,
  outputTokens: 0,
  cacheCreationInputTokens: 0,
  cacheReadInputTokens: 0,
  requests: 0,
  errorStatus: 0,
  costUsd: 0,
  budgetExhausted: "",
};

/** What a run may spend, and what its task spent before it (earlier attempts). 0: no cap. */
export interface RunBudget {
  maxUsd: number;
  maxInputTokens: number;
  maxOutputTokens: number;
  spent: { usd: number; inputTokens: number; outputTokens: number };
}

/** One agent's model proxy: a Unix socket that reaches the real Messages API. */
export interface ModelProxy {
  socketPath: string;
  /** Tokens since the last take(); resets the count (one task's usage). */
  take(): MeteredUsage;
  /**
   * Opens the proxy for a run: the requests from now on reach the model, capped to what
   * `budget` leaves (undefined: no cap), until the next seal() or limit(). With `runKey`, only
   * requests that carry it (`x-api-key: <runKey>`, or `authorization: Bearer <runKey>`) are let
   * through, model calls and Broker tools alike (others: 401): a request made by an earlier run,
   * still on its way (a half-open connection the kernel delivers late), is refused by this one.
   * Without it, any request is (tests and benchmarks).
   */
  limit(budget: RunBudget | undefined, runKey?: string): void;
  /**
   * Refuses every model request and Broker tool call (403, saying `why`) until the next
   * limit(): between runs (a proxy starts so), and from a run's result line on, its outcome
   * taken, so that what of it still runs, or outlives it in the agent's container, spends
   * nothing unmetered and speaks for the agent no more. Calls let in before go on (a run's
   * outcome waits for them: see inFlight()).
   */
  seal(why: string): void;
  /**
   * The run is over: seals the proxy (NO_RUN) and ends every request it let in, answered or
   * not: one whose headers came while the run was open may send its body, or wait for its
   * answer, long after. A model call so cut is charged the most it could have cost unless its
   * answer told its usage already (see CallMeter): take() the run's usage after this.
   */
  endRun(): void;
  /**
   * Model calls under way: their answers, metered as they pass, not yet at their end. A call
   * whose agent left is one still, its answer read on to meter it, until it ends or is cut.
   */
  inFlight(): number;
  close(): Promise<void>;
}

/** A model call under way. */
interface Call {
  /** Ends it at once, its answer or not (charged as CallMeter says). */
  cut(): void;
}

/** Why a model request is refused while the agent has no run (the proxy starts so). */
export const NO_RUN = "no run of this agent is under way: model calls are made only by its runs";

/** Largest request body forwarded. The CLI resends the whole conversation each turn: several MB. */
export const MAX_BODY_BYTES = 32 * 1024 * 1024;
/** Request line plus headers, in bytes: node's default, pinned against `--max-http-header-size`. */
export const MAX_HEADER_BYTES = 16 * 1024;
/** Headers read per request (node's default); any beyond are dropped, never forwarded. */
export const MAX_HEADERS = 2000;
/** Open connections per proxy, i.e. per agent: its CLI and subagents use a handful. */
export const MAX_CONNECTIONS = 64;
/**
 * Model calls under way at once per proxy, answers read on after their agent left among them
 * (pipelined requests on its connections too); more are refused 429 until one ends.
 */
export const MAX_CALLS = 64;
/** Refused requests logged per second and proxy; the count of the others is logged after. */
const MAX_REFUSALS_LOGGED = 20;
/** How much of a refused request target goes into the log. */
const LOGGED_TARGET_CHARS = 200;
const DEFAULT_UPSTREAM = "https://api.anthropic.com";

/**
 * The only request targets forwarded, in origin form exactly as the CLI sends them: the
 * Messages API and its token counter, with an optional plain query (`?beta=true`). Another host
 * in any spelling (`//h/x`, `http://h/x`, `h:443`, `*`), dot segments, encoded or back slashes
 * and userinfo do not match.
 */
const FORWARDED_TARGET = /^(\/v1\/messages(?:\/count_tokens)?)(\?[\w.~=&%+-]*)?$/;

/** The path and query to send upstream for a request, or undefined when it is refused. */
export function forwardedTarget(
  method: string,
  target: string,
): { pathname: string; search: string } | undefined {
  const m = method === "POST" ? FORWARDED_TARGET.exec(target) : null;
  return m ? { pathname: m[1]!, search: m[2] ?? "" } : undefined;
}

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "expect",
  "host",
  "content-length",
]);

/**
 * Request headers an agent may not pass upstream: credentials (the proxy adds the key), and
 * the forwarding headers a gateway in front of the upstream might route or trust by.
 */
const AGENT_MAY_NOT_SET = new Set([
  "x-api-key",
  "authorization",
  "forwarded",
  "x-forwarded-for",
  "x-forwarded-host",
  "x-forwarded-proto",
  "x-forwarded-port",
  "x-real-ip",
]);

/**
 * Serves the Anthropic API to one agent on a Unix socket (mounted into its container). The
 * AgentHost adds the real API key on the way out, so no key is ever with the agent, and counts
 * the tokens of every answer at this one place (see CallMeter for what a call is charged).
 *
 * Only `POST /v1/messages` and `POST /v1/messages/count_tokens` (see {@link forwardedTarget})
 * reach the configured upstream, below its own path prefix; with `mcp`, requests for exactly
 * {@link MCP_PATH} go to it (the agent's Broker tools); everything else is answered 403
 * (model requests and MCP too while it is sealed: it starts so, and limit() opens it for a run;
 * 401 for those without the run's key, see limit())
 * (CONNECT, malformed requests: 4xx; a body with a content-encoding or a charset but UTF-8:
 * 415; beyond {@link MAX_CALLS} calls under way: 429; a refused request pipelined behind
 * one not yet answered closes its connection) in the Messages API's error shape and logged (at most
 * {@link MAX_REFUSALS_LOGGED} a second, then their count). The socket is mode 0600, owned by `owner` when given (the agent's user), else by
 * the service's user.
 * Bounds: bodies up to {@link MAX_BODY_BYTES} (413 beyond), request line and headers up to
 * {@link MAX_HEADER_BYTES} (431 beyond), {@link MAX_HEADERS} headers, {@link MAX_CONNECTIONS}
 * open connections (more are closed at once); node's defaults of 60 s to receive the headers
 * and 300 s for the whole request.
 */
export async function startModelProxy(opts: {
  socketPath: string;
  upstream: string;
  apiKey: string;
  log: Logger;
  owner?: { uid: number; gid: number } | undefined;
  /** USD per million tokens by model (agent.prices); DEFAULT_PRICES when not given. */
  prices?: Readonly<Record<string, ModelPrice>> | undefined;
  /** Serves the agent's MCP tools at MCP_PATH (the socket says which agent calls). */
  mcp?: McpHandler | undefined;
}): Promise<ModelProxy> {
  const prices = opts.prices ?? DEFAULT_PRICES;
  let budget: RunBudget | undefined;
  /** Why model requests are refused now; undefined while a run may call the model. */
  let sealed: string | undefined = NO_RUN;
  /** The current run's key (see limit()), or undefined: any request is the run's. */
  let runKey: Buffer | undefined;
  /**
   * Answers and returns true when a request is not the current run's: none is under way, or
   * its result is in (sealed: 403), or it lacks the run's key (see limit(): 401).
   */
  const refusedForRun = (req: http.IncomingMessage, res: http.ServerResponse): boolean => {
    const [method, target] = [req.method ?? "", req.url ?? ""];
    if (sealed !== undefined) {
      refused(method, target, 403);
      refuse(res, 403, "permission_error", sealed);
      return true;
    }
    if (!runKey) return false;
    const bearer = /^Bearer (.+)$/i.exec(String(req.headers.authorization ?? ""))?.[1];
    const given = Buffer.from(String(req.headers["x-api-key"] ?? bearer ?? ""));
    if (given.length === runKey.length && timingSafeEqual(given, runKey)) return false;
    refused(method, target, 401);
    refuse(
      res,
      401,
      "authentication_error",
      given.length === 0
        ? "the request carries no key: each run's requests carry the key its CLI was given"
        : "the request's key is not the current run's: an earlier run's request, or not a run's",
    );
    return true;
  };
  /** Why the next request would overspend, or undefined while the budget holds. */
  const overBudget = (): string | undefined => {
    if (!budget) return undefined;
    const usd = budget.spent.usd + usage.costUsd;
    const input = budget.spent.inputTokens + usage.inputTokens;
    const output = budget.spent.outputTokens + usage.outputTokens;
    if (budget.maxUsd > 0 && usd >= budget.maxUsd)
      return `$${usd.toFixed(4)} of $${budget.maxUsd.toFixed(4)}`;
    if (budget.maxInputTokens > 0 && input >= budget.maxInputTokens)
      return `${input} input tokens of ${budget.maxInputTokens}`;
    if (budget.maxOutputTokens > 0 && output >= budget.maxOutputTokens)
      return `${output} output tokens of ${budget.maxOutputTokens}`;
    return undefined;
  };
  const upstream = parseUpstream(opts.upstream);
  const prefix = upstream.pathname.replace(/\/+$/, "");
  const client = upstream.protocol === "https:" ? https : http;
  const agentOpts = { keepAlive: true, maxSockets: MAX_CONNECTIONS };
  const agent = client === https ? new https.Agent(agentOpts) : new http.Agent(agentOpts);
  const log = opts.log;
  let usage: MeteredUsage = { ...NO_USAGE };
  /** Broker tool calls let through and not yet answered. */
  const admitted = new Set<http.ServerResponse>();
  /** Model calls under way: let through, their answers not yet at their end. */
  const calls = new Set<Call>();

  /** Refusals logged in the current second, and those left out of the log in it. */
  const refusals = { since: 0, logged: 0, unlogged: 0 };
  const refused = (method: string, target: string, status: number) => {
    const now = Date.now();
    if (now - refusals.since >= 1000) {
      if (refusals.unlogged)
        log.warn("model proxy: more requests refused", { count: refusals.unlogged });
      Object.assign(refusals, { since: now, logged: 0, unlogged: 0 });
    }
    if (refusals.logged++ < MAX_REFUSALS_LOGGED)
      log.warn("model proxy: request refused", { method, target: clip(target), status });
    else refusals.unlogged++;
  };
  const refuse = (res: http.ServerResponse, status: number, type: string, message: string) => {
    // Pipelined behind a request not yet answered, node would queue this answer in memory:
    // the connection is closed instead (HTTP/1.1 pipelining of refused requests is not served).
    if (!res.socket) return void res.req.socket.destroy();
    const body = errorBody(type, `model proxy: ${message}`);
    res.writeHead(status, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      connection: "close",
    });
    res.end(body);
  };

  const forward = (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    to: { pathname: string; search: string },
  ) => {
    const url = new URL(upstream.href);
    url.pathname = prefix + to.pathname;
    url.search = to.search;
    url.hash = "";
    usage.requests++;
    // count_tokens is free: only the Messages API's answers are metered.
    const metered = to.pathname === "/v1/messages";
    const meter = new CallMeter(prices, (more, usd) => {
      if (!metered) return;
      usage.inputTokens += more.input;
      usage.outputTokens += more.output;
      usage.cacheCreationInputTokens += more.cacheWrite;
      usage.cacheReadInputTokens += more.cacheRead;
      usage.costUsd += usd;
      // The answer that spends the budget is the last: calls made alongside it are cut (a
      // next one is refused, and the run ends with error_kind BUDGET then).
      if (overBudget()) for (const other of calls) if (other !== call) other.cut();
    });
    let answer: http.IncomingMessage | undefined;
    let over = false;
    /** The call is over: its answer ended `whole`, or not (see CallMeter for what is charged). */
    const finish = (whole: boolean) => {
      if (over) return;
      over = true;
      calls.delete(call);
      const told = whole ? meter.end() : meter.cut();
      if (!told && metered)
        log.warn("model proxy: an answer did not tell its usage: charged the most it could cost", {
          status: answer?.statusCode ?? 0,
          content_encoding: answer?.headers["content-encoding"],
        });
    };
    const call: Call = {
      cut() {
        if (over) return;
        finish(false);
        out.destroy();
        answer?.destroy();
        res.destroy();
      },
    };
    calls.add(call);
    const out = client.request(url, { method: "POST", headers: outHeaders(req), agent }, (up) => {
      answer = up;
      const headers: http.OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(up.headers))
        if (!HOP_BY_HOP.has(k) && v !== undefined) headers[k] = v;
      const status = up.statusCode ?? 502;
      if (status >= 400) usage.errorStatus = status;
      meter.answer(status, up.headers);
      if (!res.destroyed) res.writeHead(status, headers);
      up.on("data", (chunk: Buffer) => {
        meter.body(chunk);
        // At the pace the agent reads (an answer is not held for it), unless it left.
        if (!res.destroyed && !res.write(chunk)) {
          up.pause();
          const resume = () => {
            res.off("drain", resume).off("close", resume);
            up.resume();
          };
          res.on("drain", resume).on("close", resume);
        }
      });
      up.on("end", () => {
        finish(true);
        res.end();
      });
      up.on("error", () => undefined); // its close follows
      up.on("close", () => {
        if (over) return;
        finish(false); // broken off before its end
        res.destroy();
      });
    });
    out.on("finish", () => meter.requestSent());
    out.on("error", (e) => {
      if (over) return;
      finish(false);
      log.warn("model proxy: upstream unreachable", { upstream: upstream.origin, error: e });
      if (res.headersSent) return void res.destroy();
      usage.errorStatus = 502;
      res.writeHead(502, { "content-type": "application/json" });
      res.end(errorBody("api_error", `model proxy: ${e.message}`));
    });
    res.on("close", () => {
      if (over || res.writableFinished) return;
      // The agent left before its answer ended. Once its request is all upstream, the model
      // is at work on it and bills it: the answer is read on, unseen, and metered (until the
      // run's end cuts it, charged then at the most it could cost); before, nothing is billed.
      if (!out.writableFinished) call.cut();
    });
    let received = 0;
    req.on("data", (chunk: Buffer) => {
      received += chunk.length;
      if (received <= MAX_BODY_BYTES) return meter.request(chunk);
      if (over) return;
      finish(false); // not all of it went upstream: nothing is billed
      req.unpipe(out);
      out.destroy();
      refused(req.method ?? "", req.url ?? "", 413);
      if (res.headersSent) return void res.destroy();
      refuse(res, 413, "request_too_large", `request body over ${MAX_BODY_BYTES} bytes`);
    });
    req.pipe(out);
  };

  const outHeaders = (req: http.IncomingMessage): http.OutgoingHttpHeaders => {
    const named = new Set(
      String(req.headers.connection ?? "")
        .split(",")
        .map((h) => h.trim().toLowerCase()),
    );
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (HOP_BY_HOP.has(k) || named.has(k) || v === undefined) continue;
      if (!AGENT_MAY_NOT_SET.has(k)) headers[k] = v;
    }
    // The body goes on as it came: with its Content-Length when it had one (some upstreams
    // and gateways read bodies by it and refuse chunked ones), else chunked.
    if (
      req.headers["content-length"] !== undefined &&
      req.headers["transfer-encoding"] === undefined
    )
      headers["content-length"] = String(Number(req.headers["content-length"]));
    if (opts.apiKey) headers["x-api-key"] = opts.apiKey;
    headers["host"] = upstream.host;
    // Every answer is read to meter its usage: none may come compressed.
    headers["accept-encoding"] = "identity";
    return headers;
  };

  const handle = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const method = req.method ?? "";
    const target = req.url ?? "";
    if (opts.mcp && target === MCP_PATH) {
      // The Broker's tools are the run's, as the model is: none while no run is under way.
      if (refusedForRun(req, res)) return;
      admitted.add(res);
      res.once("close", () => admitted.delete(res));
      if (req.headers.expect?.toLowerCase() === "100-continue") res.writeContinue();
      return opts.mcp(req, res);
    }
    const to = forwardedTarget(method, target);
    if (!to) {
      refused(method, target, 403);
      const what = `${method} ${clip(target)}`;
      return refuse(
        res,
        403,
        "permission_error",
        `${what} refused: only POST /v1/messages and /v1/messages/count_tokens reach the model API`,
      );
    }
    if (Number(req.headers["content-length"] ?? 0) > MAX_BODY_BYTES) {
      refused(method, target, 413);
      return refuse(res, 413, "request_too_large", `request body over ${MAX_BODY_BYTES} bytes`);
    }
    const unreadable = unreadableBody(req.headers);
    if (unreadable) {
      // The proxy reads what a request asks (its max_tokens, for the meter): in UTF-8 JSON.
      refused(method, target, 415);
      return refuse(res, 415, "invalid_request_error", unreadable);
    }
    if (refusedForRun(req, res)) return;
    if (calls.size >= MAX_CALLS) {
      refused(method, target, 429);
      return refuse(
        res,
        429,
        "rate_limit_error",
        `${MAX_CALLS} model calls are under way for this agent: retry when one has ended`,
      );
    }
    const over = overBudget();
    if (over) {
      refused(method, target, 400);
      usage.budgetExhausted = over;
      return refuse(
        res,
        400,
        "invalid_request_error",
        `budget exhausted: ${over} (the task's budget; no further model call is made)`,
      );
    }
    // Only now, with the request known to be forwarded, may a waiting client send its body.
    if (req.headers.expect?.toLowerCase() === "100-continue") res.writeContinue();
    forward(req, res, to);
  };
  // Every request reaches `handle`, so each refusal is answered and logged the same way: none
  // is turned away by node for a missing Host or an odd Expect header, and a refused client
  // that asked `Expect: 100-continue` is refused before it sends its body.
  const server = http.createServer(
    { maxHeaderSize: MAX_HEADER_BYTES, requireHostHeader: false },
    handle,
  );
  server.on("checkExpectation", handle);
  server.on("checkContinue", handle);
  server.maxHeadersCount = MAX_HEADERS;
  server.maxConnections = MAX_CONNECTIONS;
  server.on("connect", (req: http.IncomingMessage, socket: Duplex) => {
    socket.on("error", () => socket.destroy());
    refused(req.method ?? "", req.url ?? "", 403);
    socket.end(rawResponse(403, "permission_error", "CONNECT refused: this is not a proxy"));
  });
  server.on("clientError", (err: Error & { code?: string; rawPacket?: Buffer }, socket: Duplex) => {
    // As node's own handler: answer unless the peer is gone or an answer is already under way.
    const busy = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (err.code === "ECONNRESET" || !socket.writable || busy?.headersSent) {
      socket.destroy();
      return;
    }
    const status =
      err.code === "HPE_HEADER_OVERFLOW"
        ? 431
        : err.code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? 408
          : 400;
    const line = err.rawPacket?.subarray(0, 2 * LOGGED_TARGET_CHARS).toString("latin1") ?? "";
    const [method = "", target = ""] = (line.split("\r\n")[0] ?? "").split(" ");
    log.warn("model proxy: malformed request refused", {
      method: clip(method),
      target: clip(target),
      status,
      error: err.code,
    });
    socket.end(rawResponse(status, "invalid_request_error", `malformed request (${err.code})`));
  });
  server.on("drop", () =>
    log.warn("model proxy: connection refused: too many open", { max: MAX_CONNECTIONS }),
  );

  mkdirSync(path.dirname(opts.socketPath), { recursive: true });
  rmSync(opts.socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.socketPath, () => {
      server.off("error", reject);
      try {
        socketForAgent(opts.socketPath, opts.owner);
        resolve();
      } catch (e) {
        server.close();
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
  server.on("error", (e) => log.error("model proxy: socket failed", { error: e }));
  return {
    socketPath: opts.socketPath,
    take() {
      const u = usage;
      usage = { ...NO_USAGE };
      return u;
    },
    limit(b, key) {
      budget = b;
      runKey = key === undefined ? undefined : Buffer.from(key);
      sealed = undefined;
    },
    seal(why) {
      sealed = why;
    },
    endRun() {
      sealed = NO_RUN;
      runKey = undefined;
      for (const call of calls) call.cut();
      for (const res of admitted) res.destroy();
    },
    inFlight: () => calls.size,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
        agent.destroy();
      }),
  };
}

/**
 * Why a request body cannot be read as the meter reads it (UTF-8 JSON, uncompressed), or
 * undefined when it can.
 */
function unreadableBody(headers: http.IncomingHttpHeaders): string | undefined {
  const encoding = String(headers["content-encoding"] ?? "identity")
    .trim()
    .toLowerCase();
  if (encoding !== "identity" && encoding !== "")
    return `request body in content-encoding ${clip(encoding)}: only identity is forwarded`;
  // A charset named anywhere in it must be UTF-8's, alone: no list, quoting or extension.
  const type = headers["content-type"] ?? "";
  if (/charset/i.test(type) && !/^[\w.+/-]+\s*;\s*charset\s*=\s*"?utf-?8"?\s*$/i.test(type))
    return `request body in ${clip(JSON.stringify(type))}: only UTF-8 is forwarded`;
  return undefined;
}

/** The upstream base URL, checked once at start; its path is a prefix of every request's. */
function parseUpstream(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw || DEFAULT_UPSTREAM);
  } catch (e) {
    throw new Error(`model proxy: upstream ${JSON.stringify(raw)} is not a URL`, { cause: e });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new Error(`model proxy: upstream ${url.origin} is not http(s)`);
  return url;
}

/** A Messages API error body: `{"type":"error","error":{type,message}}`. */
function errorBody(type: string, message: string): string {
  return JSON.stringify({ type: "error", error: { type, message } });
}

/** A whole HTTP/1.1 error answer, for sockets no response object is attached to. */
function rawResponse(status: number, type: string, message: string): string {
  const body = errorBody(type, `model proxy: ${message}`);
  return (
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? "Error"}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    `Connection: close\r\n\r\n${body}`
  );
}

function clip(s: string): string {
  return s.length <= LOGGED_TARGET_CHARS ? s : `${s.slice(0, LOGGED_TARGET_CHARS)}…`;
}
