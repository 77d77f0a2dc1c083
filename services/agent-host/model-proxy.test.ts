import { DEFAULT_PRICES, priceOf } from "../shared/prices.ts";
import { spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it, vi } from "vitest";
import { startFakeModel } from "../../test/fake-model/server.ts";
import { createLogger, silentLogger } from "../shared/log.ts";
import {
  forwardedTarget,
  MAX_BODY_BYTES,
  MAX_CALLS,
  MAX_CONNECTIONS,
  NO_RUN,
  NO_USAGE,
  startModelProxy,
  type ModelProxy,
} from "./model-proxy.ts";

const KEY = "sk-real-secret";

/** A unique temp folder, removed by `await using`. */
function tempDir(): { path: string } & Disposable {
  const dir = mkdtempSync(path.join(tmpdir(), "conductor-proxy-"));
  return { path: dir, [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Posts a Messages API request through a Unix socket, as the container's forwarder does. */
function postOverSocket(
  socketPath: string,
  body: unknown,
  apiKey: string,
  target = "/v1/messages?beta=true",
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath,
        path: target,
        method: "POST",
        headers: { "content-type": "application/json", "x-api-key": apiKey },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (d: string) => (text += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

/** What a raw exchange got back: the status (0 if none) and the body after the head. */
interface RawAnswer {
  status: number;
  body: string;
}

/**
 * Writes bytes to the socket verbatim (so odd request targets arrive as written) and collects
 * everything until the proxy closes the connection; requests meant to succeed send
 * `Connection: close`.
 */
function raw(socketPath: string, ...parts: (string | Buffer)[]): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const sock = net.connect(socketPath, () => {
      for (const p of parts) sock.write(p);
    });
    sock.on("data", (c: Buffer) => chunks.push(c));
    sock.on("error", () => undefined); // EPIPE/ECONNRESET once a refusal closes mid-body
    sock.on("close", () => {
      const text = Buffer.concat(chunks).toString("latin1");
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0);
      resolve({ status, body: text.slice(text.indexOf("\r\n\r\n") + 4) });
    });
  });
}

/** One request as the upstream received it. */
interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  bytes: number;
  complete: boolean; // the whole body arrived
  closed: boolean;
}

/** A real upstream on 127.0.0.1:0 recording every request; `hold` keeps its answers back. */
async function startUpstream() {
  const seen: Seen[] = [];
  const held: http.ServerResponse[] = [];
  const waiters: { pred: () => boolean; resolve: () => void }[] = [];
  const notify = () => {
    for (const w of waiters.filter((w) => w.pred())) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve();
    }
  };
  const answer = (res: http.ServerResponse) =>
    res
      .writeHead(200, { "content-type": "application/json" })
      .end('{"type":"message","usage":{"input_tokens":3,"output_tokens":2}}\n');
  const state = { hold: false };
  const server = http.createServer((req, res) => {
    const rec: Seen = {
      method: req.method ?? "",
      url: req.url ?? "",
      headers: req.headers,
      bytes: 0,
      complete: false,
      closed: false,
    };
    seen.push(rec);
    req.on("data", (c: Buffer) => (rec.bytes += c.length));
    req.on("end", () => {
      rec.complete = true;
      if (state.hold) held.push(res);
      else answer(res);
      notify();
    });
    req.on("close", () => {
      rec.closed = true;
      notify();
    });
    notify();
  });
  server.listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    seen,
    state,
    /** Resolves once `pred` holds, re-checked on every arrival, end and close. */
    until: (pred: () => boolean) =>
      pred() ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ pred, resolve })),
    release: () => held.splice(0).forEach(answer),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A listener standing in for the attacker's host: records any connection and any bytes. */
async function startAttacker() {
  const received: string[] = [];
  const state = { connections: 0 };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    state.connections++;
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.on("data", (c: Buffer) => {
      received.push(c.toString("latin1"));
      // Answer, so a leaking proxy hands this back instead of hanging the test.
      sock.end("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\npwned");
    });
  });
  server.listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    received,
    state,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A proxy in a temp folder between a real upstream and the attacker's listener, logs kept. */
async function startRig(
  o: { upstreamPath?: string; owner?: { uid: number; gid: number }; folderMode?: number } = {},
) {
  const dir = tempDir();
  const upstream = await startUpstream();
  const attacker = await startAttacker();
  const lines: Record<string, unknown>[] = [];
  const log = createLogger("debug", {}, (l) =>
    lines.push(JSON.parse(l) as Record<string, unknown>),
  );
  const runDir = path.join(dir.path, "run");
  mkdirSync(runDir);
  if (o.folderMode !== undefined) for (const d of [dir.path, runDir]) chmodSync(d, o.folderMode);
  let proxy: ModelProxy;
  try {
    proxy = await startModelProxy({
      socketPath: path.join(runDir, "model.sock"),
      upstream: upstream.url + (o.upstreamPath ?? ""),
      apiKey: KEY,
      log,
      owner: o.owner,
    });
    proxy.limit(undefined); // as during a run
  } catch (e) {
    await upstream.close();
    await attacker.close();
    dir[Symbol.dispose]();
    throw e;
  }
  return {
    proxy,
    upstream,
    attacker,
    warnings: () => lines.filter((l) => l["level"] === "warn"),
    async [Symbol.asyncDispose]() {
      await proxy.close();
      await upstream.close();
      await attacker.close();
      dir[Symbol.dispose]();
    },
  };
}
type Rig = Awaited<ReturnType<typeof startRig>>;

/** Sends `request` raw and checks it was refused with `status`, logged, and went nowhere. */
async function expectRefused(rig: Rig, request: string, status: number) {
  const before = rig.warnings().length;
  const res = await raw(rig.proxy.socketPath, request);
  expect(res.status).toBe(status);
  const answer = JSON.parse(res.body) as {
    type: string;
    error?: { type: string; message: string };
  };
  expect(answer.type).toBe("error");
  expect(answer.error?.type).toBe(status === 403 ? "permission_error" : "invalid_request_error");
  expect(answer.error?.message).toMatch(/^model proxy: /);
  expect(rig.attacker.received).toEqual([]);
  expect(rig.attacker.state.connections).toBe(0);
  expect(rig.upstream.seen).toEqual([]);
  const logged = rig.warnings().slice(before);
  expect(logged).toHaveLength(1);
  expect(logged[0]?.["msg"]).toMatch(/^model proxy: (malformed )?request refused$/);
  expect(logged[0]?.["status"]).toBe(status);
  expect(String(logged[0]!["method"])).toBe(request.split(" ")[0]!.slice(0, 201));
  expect(String(logged[0]!["target"]).length).toBeLessThanOrEqual(201);
  return logged[0]!;
}

const get = (target: string, more = "") => `GET ${target} HTTP/1.1\r\nHost: x\r\n${more}\r\n`;
const post = (target: string, host = "x") =>
  `POST ${target} HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\n` +
  `x-api-key: placeholder\r\nContent-Length: 2\r\n\r\n{}`;

/** Request targets naming another host or path in every spelling we know; `a` is host:port. */
const REFUSED: [name: string, request: (a: string) => string, status: number][] = [
  ["the reproduction: origin form //host:port/x", (a) => get(`//${a}/x`), 403],
  ["the absolute form http://x//host:port/x", (a) => get(`http://x//${a}/x`), 403],
  ["a Host naming the attacker", (a) => post("/x", a), 403],
  ["absolute form to the attacker's Messages API", (a) => post(`http://${a}/v1/messages`), 403],
  ["https absolute form", (a) => post(`https://${a}/v1/messages?beta=true`), 403],
  ["//host:port/v1/messages", (a) => post(`//${a}/v1/messages?beta=true`), 403],
  ["//host/v1/messages without a port", () => post("//127.0.0.1/v1/messages"), 403],
  ["backslashes \\\\host\\v1\\messages", (a) => post(`\\\\${a}\\v1\\messages`), 400],
  ["a backslash after the first slash", (a) => post(`/\\${a}/v1/messages`), 403],
  ["backslash dot segments", () => post("/v1/messages\\..\\..\\x"), 403],
  ["dot segments /v1/messages/../../x", () => post("/v1/messages/../../x"), 403],
  ["encoded dot segments", () => post("/v1/messages/%2E%2E/%2E%2E/x"), 403],
  ["percent-encoded slashes /%2F%2Fhost:port/", (a) => get(`/%2F%2F${a}/`), 403],
  ["percent-encoded slashes before the path", (a) => post(`/%2F%2F${a}/v1/messages`), 403],
  ["userinfo in the absolute form", (a) => post(`http://x@${a}/v1/messages`), 403],
  ["userinfo after //", (a) => post(`//x@${a}/v1/messages`), 403],
  ["@ after the path", (a) => post(`/v1/messages@${a}/x`), 403],
  ["@ in the query", (a) => post(`/v1/messages?@${a}`), 403],
  ["CONNECT host:port", (a) => `CONNECT ${a} HTTP/1.1\r\nHost: ${a}\r\n\r\n`, 403],
  ["OPTIONS /v1/messages", () => `OPTIONS /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n`, 403],
  ["OPTIONS *", () => `OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n`, 403],
  ["GET /v1/messages", () => get("/v1/messages?beta=true"), 403],
  ["GET *", () => get("*"), 403],
  ["another API path: GET /v1/models", () => get("/v1/models"), 403],
  ["another API path: POST /v1/files", () => post("/v1/files?beta=true"), 403],
  ["another API path: batches", () => post("/v1/messages/batches?beta=true"), 403],
  ["a trailing slash", () => post("/v1/messages/"), 403],
  ["a different case", () => post("/V1/messages"), 403],
  ["a fragment", (a) => post(`/v1/messages#//${a}/`), 403],
  [
    "an upgrade to the attacker",
    (a) => get(`//${a}/x`, "Connection: Upgrade\r\nUpgrade: x\r\n"),
    403,
  ],
  ["HTTP/1.0", (a) => `GET //${a}/x HTTP/1.0\r\n\r\n`, 403],
  ["no Host header", (a) => `GET //${a}/x HTTP/1.1\r\n\r\n`, 403],
  ["an odd Expect header", (a) => get(`//${a}/x`, "Expect: x\r\n"), 403],
  [
    "Expect: 100-continue",
    (a) => post(`//${a}/v1/messages`).replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n"),
    403,
  ],
  ["an HTTP/2 preface", () => "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400],
  ["a long target (8 KiB)", (a) => get(`//${a}/${"a".repeat(8 * 1024)}`), 403],
  ["a target over the header bound (20 KiB)", (a) => get(`//${a}/${"a".repeat(20 * 1024)}`), 431],
  [
    "two targets on the request line",
    (a) => `POST /v1/messages //${a}/ HTTP/1.1\r\nHost: x\r\n\r\n`,
    400,
  ],
  ["a lower-case method", () => `post /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n`, 400],
];

/** A small model call through the proxy on `socketPath`. */
function askHi(socketPath: string) {
  return postOverSocket(
    socketPath,
    { model: "m", max_tokens: 10, messages: [{ role: "user", content: "hi" }] },
    "x",
  );
}

/**
 * A proxy on `<dir>/model.sock` to `upstream`, with the test key and a silent log, open as
 * during a run (`sealed`: as it starts, between runs).
 */
async function proxyTo(
  upstream: string,
  dir: string,
  more: Partial<Parameters<typeof startModelProxy>[0]> = {},
  sealed = false,
) {
  const proxy = await startModelProxy({
    socketPath: path.join(dir, "model.sock"),
    upstream,
    apiKey: KEY,
    log: silentLogger,
    ...more,
  });
  if (!sealed) proxy.limit(undefined);
  return proxy;
}

describe("model proxy", () => {
  it("adds the real key on the way out and meters the tokens of streamed answers", async () => {
    await using model = await startFakeModel();
    using dir = tempDir();
    const proxy = await proxyTo(model.url, dir.path);
    try {
      const prompt = `<fake-script>[{"text":"hi","usage":{"input_tokens":42,"output_tokens":7}}]</fake-script>`;
      const res = await postOverSocket(
        proxy.socketPath,
        {
          model: "m",
          max_tokens: 10,
          stream: true,
          tools: [{ name: "Write", input_schema: { type: "object" } }],
          messages: [{ role: "user", content: prompt }],
        },
        "placeholder-from-container",
      );
      expect(res.status).toBe(200);
      expect(res.text).toContain("message_stop");
      const seen = model.requests.at(-1)!;
      expect(seen.headers["x-api-key"]).toBe(KEY);
      expect(JSON.stringify(seen.headers)).not.toContain("placeholder-from-container");
      expect(proxy.take()).toEqual({
        ...NO_USAGE,
        inputTokens: 42,
        outputTokens: 7,
        requests: 1,
        costUsd: (42 * 15 + 7 * 75) / 1e6, // model "m" is priced at the default (Opus)
      });
      expect(proxy.take()).toEqual(NO_USAGE);
    } finally {
      await proxy.close();
    }
  });

  it("refuses a request once the run's budget is spent, before it reaches the API", async () => {
    await using model = await startFakeModel();
    using dir = tempDir();
    const proxy = await proxyTo(model.url, dir.path, {
      prices: { "claude-sonnet-4": { input: 3, output: 15 } },
    });
    try {
      const ask = () =>
        postOverSocket(
          proxy.socketPath,
          {
            model: "claude-sonnet-4-5",
            max_tokens: 10,
            tools: [{ name: "Write", input_schema: { type: "object" } }],
            messages: [
              {
                role: "user",
                content: `<fake-script>[{"text":"hi","usage":{"input_tokens":1000,"output_tokens":100}}]</fake-script>`,
              },
            ],
          },
          "x",
        );
      // Earlier attempts spent $0.004; this one may spend up to $0.005 in all.
      proxy.limit({
        maxUsd: 0.005,
        maxInputTokens: 0,
        maxOutputTokens: 0,
        spent: { usd: 0.004, inputTokens: 0, outputTokens: 0 },
      });
      expect((await ask()).status).toBe(200); // $0.0045 spent: under the cap
      const refused = await ask();
      expect(refused.status).toBe(400);
      expect(JSON.parse(refused.text)).toMatchObject({
        error: {
          type: "invalid_request_error",
          message: expect.stringMatching(/budget exhausted: \$0\.0085 of \$0\.0050/) as string,
        },
      });
      expect(model.requests).toHaveLength(1);
      const m = proxy.take();
      expect(m.budgetExhausted).toBe("$0.0085 of $0.0050");
      expect(m.costUsd).toBeCloseTo((1000 * 3 + 100 * 15) / 1e6, 12);
      proxy.limit(undefined);
      expect((await ask()).status).toBe(200);
    } finally {
      await proxy.close();
    }
  });

  it("refuses every request once sealed (a run whose result is in), until the next limit", async () => {
    await using model = await startFakeModel();
    using dir = tempDir();
    const proxy = await proxyTo(model.url, dir.path);
    try {
      const ask = () => askHi(proxy.socketPath);
      // A call under way is counted until its answer ends (a run's outcome waits for it).
      const slow = postOverSocket(
        proxy.socketPath,
        {
          model: "m",
          max_tokens: 10,
          tools: [{ name: "Write", input_schema: { type: "object" } }],
          messages: [
            {
              role: "user",
              content: `<fake-script>[{"text":"slow","delay_ms":300}]</fake-script>`,
            },
          ],
        },
        "x",
      );
      await vi.waitFor(() => expect(proxy.inFlight()).toBe(1), { timeout: 10_000 });
      proxy.seal("the run's result is in");
      expect((await slow).status).toBe(200); // begun before the seal: answered
      expect(proxy.inFlight()).toBe(0);
      const refused = await ask();
      expect(refused.status).toBe(403);
      expect(JSON.parse(refused.text)).toMatchObject({
        error: {
          type: "permission_error",
          message: expect.stringMatching(/result is in/) as string,
        },
      });
      expect(model.requests).toHaveLength(1); // the slow call alone
      proxy.take();
      proxy.limit(undefined); // the agent's next run
      expect((await ask()).status).toBe(200);
      expect(model.requests).toHaveLength(2);
    } finally {
      await proxy.close();
    }
  });

  it("starts sealed: no model or tool call gets through before a run opens it, none after it", async () => {
    await using model = await startFakeModel();
    using dir = tempDir();
    const tools: string[] = [];
    const mcp = (req: http.IncomingMessage, res: http.ServerResponse) => {
      tools.push(req.method ?? "");
      res.end("{}");
    };
    const proxy = await proxyTo(model.url, dir.path, { mcp }, true);
    try {
      const ask = () => askHi(proxy.socketPath);
      for (const target of ["/v1/messages", "/v1/messages/count_tokens"]) {
        const res = await postOverSocket(
          proxy.socketPath,
          { model: "m", messages: [{ role: "user", content: "hi" }] },
          "x",
          target,
        );
        expect(res.status).toBe(403);
        expect(JSON.parse(res.text)).toMatchObject({
          error: { type: "permission_error", message: `model proxy: ${NO_RUN}` },
        });
      }
      const tool = () => postOverSocket(proxy.socketPath, { jsonrpc: "2.0" }, "x", "/mcp");
      expect((await tool()).status).toBe(403); // nor the Broker's tools
      expect(model.requests).toHaveLength(0);
      expect(tools).toEqual([]);
      proxy.limit(undefined); // a run
      expect((await ask()).status).toBe(200);
      expect((await tool()).status).toBe(200);
      proxy.seal(NO_RUN); // its end (runs.ts)
      expect((await ask()).status).toBe(403);
      expect((await tool()).status).toBe(403);
      expect(model.requests).toHaveLength(1);
      expect(tools).toEqual(["POST"]);
      expect(proxy.take()).toMatchObject({ inputTokens: expect.any(Number) as number });
    } finally {
      await proxy.close();
    }
  });

  it("takes only the current run's key: an earlier run's request arriving late is refused, unbilled", async () => {
    await using model = await startFakeModel();
    using dir = tempDir();
    const tools: string[] = [];
    const mcp = (req: http.IncomingMessage, res: http.ServerResponse) => {
      tools.push(String(req.headers["x-api-key"]));
      res.end("{}");
    };
    const proxy = await proxyTo(model.url, dir.path, { mcp }, true);
    const hi = { model: "m", max_tokens: 10, messages: [{ role: "user", content: "hi" }] };
    const ask = (key: string) => postOverSocket(proxy.socketPath, hi, key);
    const tool = (key: string) => postOverSocket(proxy.socketPath, { jsonrpc: "2.0" }, key, "/mcp");
    try {
      proxy.limit(undefined, "run-1-key");
      expect((await ask("run-1-key")).status).toBe(200);
      expect((await tool("run-1-key")).status).toBe(200);
      proxy.endRun();
      expect(proxy.take().requests).toBe(1);
      proxy.limit(undefined, "run-2-key"); // the agent's next run
      // What run 1 sent, delivered now (a retransmitted half-open connection), is not run 2's.
      for (const res of [await ask("run-1-key"), await tool("run-1-key")]) {
        expect(res.status).toBe(401);
        expect(JSON.parse(res.text)).toMatchObject({
          error: {
            type: "authentication_error",
            message: expect.stringMatching(/not the current run's/) as string,
          },
        });
      }
      const none = await postOverSocket(proxy.socketPath, hi, "");
      expect(none.status).toBe(401);
      expect(none.text).toMatch(/carries no key/);
      expect((await ask("run-2-key-")).status).toBe(401); // a prefix or longer key is not it
      expect((await ask("run-2-ke")).status).toBe(401);
      expect(model.requests).toHaveLength(1); // none of them reached the model
      expect(proxy.take()).toEqual(NO_USAGE); // nor was billed to run 2
      // Run 2's own requests: by x-api-key, or as a bearer token; the real key goes upstream.
      expect((await ask("run-2-key")).status).toBe(200);
      const bearer = await new Promise<number>((resolve, reject) => {
        const req = http.request(
          {
            socketPath: proxy.socketPath,
            path: "/v1/messages",
            method: "POST",
            headers: { "content-type": "application/json", authorization: "Bearer run-2-key" },
          },
          (res) => resolve(res.resume().statusCode ?? 0),
        );
        req.on("error", reject);
        req.end(JSON.stringify(hi));
      });
      expect(bearer).toBe(200);
      expect((await tool("run-2-key")).status).toBe(200);
      expect(model.requests).toHaveLength(3);
      expect(model.requests.every((r) => r.headers["x-api-key"] === KEY)).toBe(true);
      expect(tools).toEqual(["run-1-key", "run-2-key"]);
      expect(proxy.take().requests).toBe(2);
    } finally {
      await proxy.close();
    }
  });

  it("answers 502 with an API-shaped error when the upstream is unreachable", async () => {
    using dir = tempDir();
    const proxy = await startModelProxy({
      socketPath: path.join(dir.path, "m.sock"),
      upstream: "http://127.0.0.1:1",
      apiKey: "k",
      log: silentLogger,
    });
    proxy.limit(undefined);
    try {
      const res = await postOverSocket(proxy.socketPath, { messages: [] }, "x");
      expect(res.status).toBe(502);
      expect(JSON.parse(res.text)).toMatchObject({ type: "error", error: { type: "api_error" } });
      // The run's failure is told apart by what the proxy saw (runs.ts apiErrorKind).
      expect(proxy.take().errorStatus).toBe(502);
    } finally {
      await proxy.close();
    }
  });

  it("refuses at start an upstream that is not an http(s) URL", async () => {
    using dir = tempDir();
    const start = (upstream: string) =>
      startModelProxy({
        socketPath: path.join(dir.path, "m.sock"),
        upstream,
        apiKey: "k",
        log: silentLogger,
      });
    await expect(start("not a url")).rejects.toThrow(/not a URL/);
    await expect(start("file:///etc/passwd")).rejects.toThrow(/not http/);
  });
});

describe("model proxy: what it forwards", () => {
  it("forwards only POST /v1/messages and /v1/messages/count_tokens", () => {
    expect(forwardedTarget("POST", "/v1/messages?beta=true")).toEqual({
      pathname: "/v1/messages",
      search: "?beta=true",
    });
    expect(forwardedTarget("POST", "/v1/messages/count_tokens")).toEqual({
      pathname: "/v1/messages/count_tokens",
      search: "",
    });
    for (const t of ["//h/v1/messages", "/v1/messages/../x", "/v1/messages?a b", "/v1/models"])
      expect(forwardedTarget("POST", t)).toBeUndefined();
    expect(forwardedTarget("GET", "/v1/messages")).toBeUndefined();
  });

  it.each(REFUSED)("refuses %s", async (_name, request, status) => {
    await using rig = await startRig();
    await expectRefused(rig, request(rig.attacker.host), status);
  });

  it("refuses the reproduction with prefix upstream too, and logs a long target cut short", async () => {
    await using rig = await startRig({ upstreamPath: "/prefix" });
    const a = rig.attacker.host;
    const logged = await expectRefused(rig, get(`//${a}/${"b".repeat(8 * 1024)}`), 403);
    expect(logged["target"]).toBe(`//${a}/${"b".repeat(200 - a.length - 3)}…`);
  });

  it("refuses a compressed request body: the meter reads what a request asks", async () => {
    await using rig = await startRig();
    const request =
      "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n" +
      "Connection: close\r\nContent-Length: 2\r\n\r\n{}";
    await expectRefused(rig, request, 415);
    for (const type of [
      "application/json; charset=utf-16",
      'application/json; x="a;charset=utf-8"; charset=utf-16',
      "application/json; charset=utf-8; charset=utf-16",
      "application/json; charset*=utf-16''",
    ])
      await expectRefused(
        rig,
        request.replace("Content-Encoding: gzip", `Content-Type: ${type}`),
        415,
      );
    const utf8 = request.replace(
      "Content-Encoding: gzip",
      'Content-Type: application/json; charset="UTF-8"',
    );
    expect((await raw(rig.proxy.socketPath, utf8)).status).toBe(200);
  });

  it("refuses curl's request as in the report", async ({ skip }) => {
    if (spawnSync("curl", ["--version"]).status !== 0) skip("curl is not installed");
    await using rig = await startRig();
    const url = `http://x//${rig.attacker.host}/x`;
    const curl = spawn("curl", ["-s", "--unix-socket", rig.proxy.socketPath, url]);
    let out = "";
    curl.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    const code = await new Promise((resolve) => curl.on("close", resolve));
    expect(code).toBe(0);
    expect(JSON.parse(out)).toMatchObject({ error: { type: "permission_error" } });
    expect(rig.attacker.state.connections).toBe(0);
    expect(rig.upstream.seen).toEqual([]);
    expect(rig.warnings()).toMatchObject([{ method: "GET", target: `//${rig.attacker.host}/x` }]);
  });

  it("sends the CLI's requests to the upstream alone, with the key, whatever the Host", async () => {
    await using rig = await startRig();
    const targets = [
      "/v1/messages?beta=true",
      "/v1/messages",
      "/v1/messages/count_tokens?beta=true",
      "/v1/messages/count_tokens",
    ];
    for (const target of targets) {
      const res = await raw(
        rig.proxy.socketPath,
        `POST ${target} HTTP/1.1\r\nHost: ${rig.attacker.host}\r\nx-api-key: placeholder\r\n` +
          `Authorization: Bearer placeholder\r\nX-Forwarded-Host: ${rig.attacker.host}\r\n` +
          `Forwarded: host=${rig.attacker.host}\r\n` +
          `Connection: close\r\nContent-Length: 2\r\n\r\n{}`,
      );
      expect(res.status).toBe(200);
    }
    expect(rig.upstream.seen.map((r) => `${r.method} ${r.url}`)).toEqual(
      targets.map((t) => `POST ${t}`),
    );
    for (const r of rig.upstream.seen) {
      expect(r.headers["x-api-key"]).toBe(KEY);
      expect(r.headers["host"]).toBe(rig.upstream.host);
      expect(r.headers["authorization"]).toBeUndefined();
      expect(r.headers["x-forwarded-host"]).toBeUndefined();
      expect(r.headers["forwarded"]).toBeUndefined();
    }
    expect(rig.attacker.state.connections).toBe(0);
    expect(rig.warnings()).toEqual([]);
    // Two Messages API answers metered; count_tokens is free, whatever its answer says.
    expect(rig.proxy.take()).toMatchObject({
      inputTokens: 6,
      outputTokens: 4,
      requests: 4,
      errorStatus: 0,
    });
  });

  it("lets a client that expects 100-continue send its body once the request is allowed", async () => {
    await using rig = await startRig();
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request({
        socketPath: rig.proxy.socketPath,
        path: "/v1/messages?beta=true",
        method: "POST",
        headers: { expect: "100-continue", "content-length": "2" },
      });
      req.on("continue", () => req.end("{}"));
      req.on("response", (res) => res.resume().on("end", () => resolve(res.statusCode ?? 0)));
      req.on("error", reject);
      req.flushHeaders();
    });
    expect(status).toBe(200);
    expect(rig.upstream.seen).toMatchObject([{ url: "/v1/messages?beta=true", bytes: 2 }]);
    expect(rig.upstream.seen[0]!.headers["expect"]).toBeUndefined();
  });

  it.each(["/prefix", "/prefix/"])("keeps the upstream's own path prefix %s", async (prefix) => {
    await using rig = await startRig({ upstreamPath: prefix });
    const res = await raw(
      rig.proxy.socketPath,
      `POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}`,
    );
    expect(res.status).toBe(200);
    expect(rig.upstream.seen.map((r) => r.url)).toEqual(["/prefix/v1/messages?beta=true"]);
    expect(rig.upstream.seen[0]!.headers["x-api-key"]).toBe(KEY);
  });
});

describe("model proxy: bounds", () => {
  const head = (extra: string) =>
    `POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${extra}\r\n`;

  it("forwards a body of several MB whole", async () => {
    await using rig = await startRig();
    const body = Buffer.alloc(5 * 1024 * 1024, "a");
    const res = await raw(rig.proxy.socketPath, head(`Content-Length: ${body.length}\r\n`), body);
    expect(res.status).toBe(200);
    expect(rig.upstream.seen).toMatchObject([{ bytes: body.length, complete: true }]);
  });

  it("refuses a declared body over the bound before forwarding anything", async () => {
    await using rig = await startRig();
    const res = await raw(rig.proxy.socketPath, head(`Content-Length: ${MAX_BODY_BYTES + 1}\r\n`));
    expect(res.status).toBe(413);
    expect(JSON.parse(res.body)).toMatchObject({ error: { type: "request_too_large" } });
    expect(rig.upstream.seen).toEqual([]);
    expect(rig.warnings()).toMatchObject([{ method: "POST", status: 413 }]);
  });

  it("cuts off a chunked body once it passes the bound", async () => {
    await using rig = await startRig();
    const mib = Buffer.alloc(1024 * 1024, "a");
    const chunk = Buffer.concat([
      Buffer.from(`${mib.length.toString(16)}\r\n`),
      mib,
      Buffer.from("\r\n"),
    ]);
    const chunks = Array.from({ length: MAX_BODY_BYTES / mib.length + 1 }, () => chunk);
    const res = await raw(
      rig.proxy.socketPath,
      head("Transfer-Encoding: chunked\r\n"),
      ...chunks,
      "0\r\n\r\n",
    );
    expect(res.status).toBe(413);
    await rig.upstream.until(() => rig.upstream.seen.every((r) => r.closed));
    expect(rig.upstream.seen.filter((r) => r.complete)).toEqual([]);
    expect(rig.warnings()).toMatchObject([{ method: "POST", status: 413 }]);
  });

  it(`closes connections beyond ${MAX_CONNECTIONS} at once`, async () => {
    await using rig = await startRig();
    rig.upstream.state.hold = true;
    const request = head("Content-Length: 2\r\n") + "{}";
    const open = Array.from({ length: MAX_CONNECTIONS }, () => raw(rig.proxy.socketPath, request));
    await rig.upstream.until(
      () => rig.upstream.seen.filter((r) => r.complete).length === MAX_CONNECTIONS,
    );
    const extra = await raw(rig.proxy.socketPath, request);
    expect(extra).toEqual({ status: 0, body: "" });
    expect(rig.warnings().map((w) => w["msg"])).toEqual([
      "model proxy: connection refused: too many open",
    ]);
    rig.upstream.state.hold = false;
    rig.upstream.release();
    expect((await Promise.all(open)).map((r) => r.status)).toEqual(open.map(() => 200));
    expect((await raw(rig.proxy.socketPath, request)).status).toBe(200);
  });
});

describe("model proxy: calls under way", () => {
  it(`refuses a call beyond ${MAX_CALLS} under way, those read on after their agent left among them, with 429`, async () => {
    await using rig = await startRig();
    rig.upstream.state.hold = true;
    const request =
      "POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
    const socks = Array.from({ length: MAX_CALLS }, () => {
      const sock = net.connect(rig.proxy.socketPath, () => sock.write(request));
      sock.on("error", () => undefined);
      return sock;
    });
    await rig.upstream.until(
      () => rig.upstream.seen.filter((r) => r.complete).length === MAX_CALLS,
    );
    for (const sock of socks) sock.destroy(); // the agents leave; their answers are read on
    // Once the proxy has seen them go, a new call gets a connection, and is refused.
    await vi.waitFor(
      async () => expect((await raw(rig.proxy.socketPath, request)).status).toBe(429),
      {
        timeout: 10_000,
      },
    );
    expect(rig.proxy.inFlight()).toBe(MAX_CALLS);
    expect(rig.upstream.seen).toHaveLength(MAX_CALLS);
    rig.upstream.state.hold = false;
    rig.upstream.release();
    await vi.waitFor(() => expect(rig.proxy.inFlight()).toBe(0));
    expect(rig.proxy.take()).toMatchObject({ requests: MAX_CALLS, outputTokens: 2 * MAX_CALLS });
  });

  it("logs at most 20 refusals a second, then how many more there were", async () => {
    await using rig = await startRig();
    const started = performance.now();
    for (let i = 0; i < 100; i++)
      await raw(rig.proxy.socketPath, get("/nope", "Connection: close\r\n"));
    const seconds = Math.ceil((performance.now() - started) / 1000);
    const logged = rig.warnings().filter((w) => w["msg"] === "model proxy: request refused");
    expect(logged.length).toBeLessThanOrEqual(20 * seconds);
    expect(logged.length).toBeGreaterThan(0);
  });

  it("closes a connection that pipelines a refused request behind one not yet answered", async () => {
    await using rig = await startRig();
    rig.upstream.state.hold = true;
    const request = (connection: string) =>
      `POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: ${connection}\r\n` +
      `Content-Length: 2\r\n\r\n{}`;
    const sock = net.connect(rig.proxy.socketPath);
    let answers = "";
    sock.on("data", (c: Buffer) => (answers += c.toString("latin1")));
    sock.on("error", () => undefined);
    const closed = new Promise((resolve) => sock.on("close", resolve));
    sock.write(request("keep-alive"));
    await rig.upstream.until(() => rig.upstream.seen.some((r) => r.complete));
    sock.write("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2)); // while the first waits
    await closed;
    expect(answers).toBe("");
    // Each pipelined request node parsed before the connection closed is refused.
    expect(rig.warnings().length).toBeGreaterThan(0);
    for (const w of rig.warnings())
      expect(w).toMatchObject({ msg: "model proxy: request refused", status: 403 });
    // The first, which reached the API, is read on and metered; the others never went.
    rig.upstream.state.hold = false;
    rig.upstream.release();
    await vi.waitFor(() => expect(rig.proxy.inFlight()).toBe(0));
    expect(rig.upstream.seen).toHaveLength(1);
    expect(rig.proxy.take()).toMatchObject({ requests: 1, inputTokens: 3, outputTokens: 2 });
  });

  it("reads an answer at the pace its agent reads it: none is held for an agent that does not", async () => {
    // An upstream writing a large answer as fast as it is taken.
    let written = 0;
    let stalled = () => {};
    const stall = new Promise<void>((resolve) => (stalled = resolve));
    const upstream = http.createServer((req, res) => {
      req.resume();
      res.writeHead(200, { "content-type": "application/json" });
      const chunk = Buffer.alloc(1 << 20, "a");
      const more = () => {
        while (written < 256 * 2 ** 20) {
          written += chunk.length;
          if (!res.write(chunk)) {
            const drained = setTimeout(stalled, 500); // no drain within half a second: held back
            res.once("drain", () => {
              clearTimeout(drained);
              more();
            });
            return;
          }
        }
        res.end();
      };
      more();
    });
    await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
    using dir = tempDir();
    const proxy = await proxyTo(
      `http://127.0.0.1:${(upstream.address() as net.AddressInfo).port}`,
      dir.path,
    );
    try {
      // The agent asks and reads nothing.
      const sock = net.connect(proxy.socketPath);
      sock.pause();
      sock.write(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
      );
      await stall;
      expect(written).toBeLessThan(64 * 2 ** 20); // of 256 MiB: the rest waits for the agent
      sock.destroy();
    } finally {
      await proxy.close();
      upstream.closeAllConnections();
      upstream.close();
    }
  });
});

describe("model proxy: its socket", () => {
  const canChown = process.getuid?.() === 0;

  it("is mode 0600 and the service's own when no owner is given", async () => {
    await using rig = await startRig();
    const st = statSync(rig.proxy.socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.uid).toBe(process.getuid?.());
  });

  it.skipIf(!canChown)("belongs to the given owner, who alone can connect", async () => {
    const owner = { uid: 4242, gid: 4243 };
    await using rig = await startRig({ owner, folderMode: 0o711 });
    const st = statSync(rig.proxy.socketPath);
    expect(st.mode & 0o777).toBe(0o600);
    expect([st.uid, st.gid]).toEqual([owner.uid, owner.gid]);
    const connectAs = (uid: number) =>
      new Promise<string>((resolve) => {
        const script = `require("net").connect(process.argv[1])
          .on("connect", () => { console.log("connected"); process.exit(0); })
          .on("error", (e) => { console.log(e.code); process.exit(0); });`;
        const child = spawn(process.execPath, ["-e", script, rig.proxy.socketPath], {
          uid,
          gid: uid,
          cwd: "/",
          env: {},
        });
        let out = "";
        child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
        child.on("close", () => resolve(out.trim()));
      });
    expect(await connectAs(owner.uid)).toBe("connected");
    expect(await connectAs(owner.uid + 10)).toBe("EACCES");
  });

  it("replaces a link planted at its path and changes nothing it pointed to", async () => {
    using dir = tempDir();
    const victim = path.join(dir.path, "victim");
    writeFileSync(victim, "secret", { mode: 0o640 });
    const socketPath = path.join(dir.path, "model.sock");
    symlinkSync(victim, socketPath);
    const proxy = await startModelProxy({
      socketPath,
      upstream: "http://127.0.0.1:1",
      apiKey: KEY,
      log: silentLogger,
      ...(canChown ? { owner: { uid: 4242, gid: 4242 } } : {}),
    });
    try {
      expect(lstatSync(socketPath).isSocket()).toBe(true);
      const v = statSync(victim);
      expect(v.mode & 0o777).toBe(0o640);
      expect(v.uid).toBe(process.getuid?.());
    } finally {
      await proxy.close();
    }
  });
});

/**
 * An upstream that misbehaves as told, one way per request: it answers at the socket level,
 * so it can send what no HTTP server would.
 */
async function startRawUpstream() {
  const mode: { next: "ok" | "garbage" | "reset" | "drip" | "huge" | "strict" } = { next: "ok" };
  const sockets = new Set<net.Socket>();
  const heads: string[] = [];
  const ok = (body: string) =>
    `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`;
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => undefined);
    let head = "";
    s.on("data", (d: Buffer) => {
      if (head.includes("\r\n\r\n")) return;
      head += d.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      heads.push(head.slice(0, head.indexOf("\r\n\r\n")));
      const what = mode.next;
      mode.next = "ok";
      if (what === "ok") s.end(ok('{"type":"message"}'));
      else if (what === "garbage") s.end("NOT HTTP AT ALL\r\n\r\nmore garbage");
      else if (what === "reset")
        s.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", () =>
          s.resetAndDestroy(),
        );
      else if (what === "strict") {
        // Reads the body by Content-Length, as Python's http.server does; chunked is an error.
        const cl = /\r\ncontent-length: *(\d+)/i.exec(head)?.[1];
        s.end(
          cl ? ok(`{"length":${cl}}`) : "HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\n\r\n",
        );
      } else if (what === "drip") {
        s.write("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n");
        let i = 0;
        const t = setInterval(() => {
          s.write("abcde"[i]!);
          if (++i === 5) {
            clearInterval(t);
            s.end();
          }
        }, 30);
      } else {
        const size = 48 * 2 ** 20;
        s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${size}\r\nconnection: close\r\n\r\n`);
        const chunk = Buffer.alloc(2 ** 20, 120);
        let sent = 0;
        const pump = () => {
          while (sent < size) {
            sent += chunk.length;
            if (!s.write(chunk)) return void s.once("drain", pump);
          }
          s.end();
        };
        pump();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    mode,
    heads,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Posts `body` through the proxy; resolves with what arrived, or how the answer broke. */
function exchange(socketPath: string, body: string) {
  return new Promise<{ status: number; bytes: number; text: string; broken: boolean }>(
    (resolve) => {
      const req = http.request(
        { socketPath, path: "/v1/messages?beta=true", method: "POST" },
        (res) => {
          let bytes = 0;
          let text = "";
          res.on("data", (d: Buffer) => {
            bytes += d.length;
            if (text.length < 1000) text += d.toString("utf8");
          });
          res.on("end", () => resolve({ status: res.statusCode ?? 0, bytes, text, broken: false }));
          res.on("error", () =>
            resolve({ status: res.statusCode ?? 0, bytes, text, broken: true }),
          );
        },
      );
      req.on("error", () => resolve({ status: 0, bytes: 0, text: "", broken: true }));
      req.setHeader("content-length", Buffer.byteLength(body));
      req.end(body);
    },
  );
}

describe("model proxy: misbehaving upstreams fail their one request, nothing more", () => {
  it("keeps Content-Length, and survives garbage, a reset, a slow drip and a huge answer", async () => {
    using dir = tempDir();
    const up = await startRawUpstream();
    const proxy = await proxyTo(up.url, dir.path);
    try {
      const body = JSON.stringify({ model: "m", messages: [] });
      up.mode.next = "strict";
      expect(await exchange(proxy.socketPath, body)).toMatchObject({
        status: 200,
        text: `{"length":${Buffer.byteLength(body)}}`,
      });
      expect(up.heads.at(-1)).not.toMatch(/transfer-encoding/i);
      up.mode.next = "garbage";
      const garbage = await exchange(proxy.socketPath, body);
      expect(garbage.status).toBe(502);
      expect(JSON.parse(garbage.text)).toMatchObject({ error: { type: "api_error" } });
      up.mode.next = "reset";
      expect((await exchange(proxy.socketPath, body)).broken).toBe(true);
      up.mode.next = "drip";
      expect(await exchange(proxy.socketPath, body)).toMatchObject({ status: 200, text: "abcde" });
      up.mode.next = "huge";
      expect(await exchange(proxy.socketPath, body)).toMatchObject({
        status: 200,
        bytes: 48 * 2 ** 20,
      });

      // And the proxy still serves.
      expect(await exchange(proxy.socketPath, body)).toMatchObject({ status: 200 });
    } finally {
      await proxy.close();
      await up.close();
    }
  });
});

describe("priceOf", () => {
  it("takes the model's own entry, else its longest prefix, else the default", () => {
    const table = {
      "claude-sonnet-4": { input: 3, output: 15 },
      "claude-sonnet-4-5-x": { input: 1, output: 1 },
      default: { input: 9, output: 9 },
    };
    expect(priceOf("claude-sonnet-4-5-x", table)).toEqual({ input: 1, output: 1 });
    expect(priceOf("claude-sonnet-4-5-20250929", table)).toEqual({ input: 3, output: 15 });
    expect(priceOf("gpt-x", table)).toEqual({ input: 9, output: 9 });
    expect(priceOf("gpt-x", {})).toEqual(DEFAULT_PRICES["default"]);
    expect(priceOf("claude-haiku-4-5", DEFAULT_PRICES)).toEqual({ input: 1, output: 5 });
    expect(priceOf("claude-opus-4-6", DEFAULT_PRICES)).toEqual({ input: 5, output: 25 });
    expect(priceOf("claude-opus-4-1-20250805", DEFAULT_PRICES)).toEqual({ input: 15, output: 75 });
    expect(priceOf("claude-3-haiku-20240307", DEFAULT_PRICES)).toEqual({
      input: 0.25,
      output: 1.25,
    });
  });
});
