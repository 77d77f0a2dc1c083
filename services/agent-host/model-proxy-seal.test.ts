// The model proxy at a run's end and at a spent budget, against requests let in before: one
// whose headers came while a run was open may send its body, or wait for its answer, long
// after (a process a run left in its container). endRun() ends them; a call that spends the
// budget ends the calls made alongside it. Raw sockets, so a request's head and body can be
// sent apart; `Expect: 100-continue` tells when the proxy has let a request in. And what the
// budget counts: prompt-cache tokens, and answers the agent asked to have compressed.
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { describe, expect, it, vi } from "vitest";
import { startFakeModel } from "../../test/fake-model/server.ts";
import { mcpHandler } from "../broker/mcp-http.ts";
import type { AgentCalls } from "../broker/mcp-tools.ts";
import { silentLogger } from "../shared/log.ts";
import { CACHE_READ_FACTOR, CACHE_WRITE_FACTOR, DEFAULT_PRICES } from "../shared/prices.ts";
import { startModelProxy, type ModelProxy } from "./model-proxy.ts";

function tempDir(): { path: string } & Disposable {
  const dir = mkdtempSync(path.join(tmpdir(), "proxy-seal-"));
  return { path: dir, [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Sends a request's head (asking `Expect: 100-continue`); `admitted` resolves once the proxy
 * let it in, `finish()` sends the body and gives the answer (status 0: the proxy cut it).
 */
function headFirst(socketPath: string, target: string, body: string) {
  const sock = net.connect(socketPath);
  const chunks: Buffer[] = [];
  let onData = () => {};
  sock.on("data", (c: Buffer) => {
    chunks.push(c);
    onData();
  });
  sock.on("error", () => undefined);
  const closed = new Promise<string>((resolve) =>
    sock.on("close", () => resolve(Buffer.concat(chunks).toString("latin1"))),
  );
  const admitted = new Promise<void>((resolve) => {
    onData = () => {
      if (Buffer.concat(chunks).toString("latin1").startsWith("HTTP/1.1 100")) resolve();
    };
  });
  const headSent = new Promise<void>((resolve) =>
    sock.once("connect", () => {
      sock.write(
        `POST ${target} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n` +
          `accept: application/json, text/event-stream\r\nanthropic-version: 2023-06-01\r\n` +
          `Expect: 100-continue\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
          `Connection: close\r\n\r\n`,
      );
      resolve();
    }),
  );
  return {
    admitted,
    async finish(): Promise<number> {
      await headSent;
      if (!sock.destroyed) sock.write(body);
      const text = (await closed).replace(/^HTTP\/1\.1 100 Continue\r\n\r\n/, "");
      return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
    },
  };
}

const asking = (content: string, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    model: "m",
    max_tokens: 10,
    tools: [{ name: "Write", input_schema: { type: "object" } }],
    messages: [{ role: "user", content }],
    ...extra,
  });

async function proxyOf(upstream: string, dir: string, more = {}): Promise<ModelProxy> {
  return startModelProxy({
    socketPath: path.join(dir, "model.sock"),
    upstream,
    apiKey: "k",
    log: silentLogger,
    ...more,
  });
}

describe("model proxy: what a run let in, after it", () => {
  it("ends a model call whose body comes after the run: it never reaches the model", async () => {
    await using model = await startFakeModel();
    using dir = tempDir();
    const proxy = await proxyOf(model.url, dir.path);
    try {
      proxy.limit(undefined); // a run
      const late = headFirst(proxy.socketPath, "/v1/messages", asking("zz-after-the-run"));
      await late.admitted;
      proxy.take(); // its outcome (runs.ts tell)
      proxy.endRun();
      expect(await late.finish()).toBe(0);
      const reached = model.requests.some((r) =>
        JSON.stringify(r.body).includes("zz-after-the-run"),
      );
      expect(reached).toBe(false);
      expect(proxy.take().requests).toBe(0); // nothing of it metered after the run
    } finally {
      await proxy.close();
    }
  });

  it("ends a Broker tool call whose body comes after the run: the tool never runs", async () => {
    using dir = tempDir();
    const sent: string[] = [];
    const calls = {
      agentId: "agent-x",
      where: "test",
      client: {
        send: (req: { payload: string }) => {
          sent.push(req.payload);
          return Promise.resolve({ messageId: "m1", delivered: true });
        },
      },
      options: () => ({}),
    } as unknown as AgentCalls;
    const proxy = await proxyOf("http://127.0.0.1:1", dir.path, {
      mcp: mcpHandler(calls, silentLogger),
    });
    try {
      proxy.limit(undefined);
      const body = JSON.stringify({
        jsonrpc: "2.0",
        id: 1,
        method: "tools/call",
        params: { name: "send_message", arguments: { to: "agent-y", message: "zz-spoofed" } },
      });
      const late = headFirst(proxy.socketPath, "/mcp", body);
      await late.admitted;
      proxy.endRun();
      expect(await late.finish()).toBe(0);
      expect(sent).toEqual([]);
    } finally {
      await proxy.close();
    }
  });

  it("ends a model call still waiting for its answer at the run's end, charged the most it could cost", async () => {
    await using model = await startFakeModel();
    using dir = tempDir();
    const proxy = await proxyOf(model.url, dir.path);
    try {
      proxy.limit(undefined);
      const slow = headFirst(
        proxy.socketPath,
        "/v1/messages",
        asking(
          `<fake-script>[{"text":"long","delay_ms":2000,"usage":{"input_tokens":1000,"output_tokens":99999}}]</fake-script>`,
        ),
      );
      await slow.admitted;
      const answering = slow.finish();
      // The body is in: the call waits for the model's answer.
      await model.waitFor((r) => JSON.stringify(r.body).includes("99999"));
      proxy.endRun();
      expect(await answering).toBe(0);
      // Not told its usage: its max_tokens (10) of output, a token a byte of its request.
      const bytes = Buffer.byteLength(
        asking(
          `<fake-script>[{"text":"long","delay_ms":2000,"usage":{"input_tokens":1000,"output_tokens":99999}}]</fake-script>`,
        ),
      );
      expect(proxy.take()).toMatchObject({ inputTokens: bytes, outputTokens: 10 });
      expect(proxy.take()).toMatchObject({ inputTokens: 0, outputTokens: 0 }); // nothing after
    } finally {
      await proxy.close();
    }
  });

  it("ends the calls made alongside the one that spends the budget", async () => {
    await using model = await startFakeModel();
    using dir = tempDir();
    const proxy = await proxyOf(model.url, dir.path);
    try {
      proxy.limit({
        maxUsd: 0,
        maxInputTokens: 0,
        maxOutputTokens: 5,
        spent: { usd: 0, inputTokens: 0, outputTokens: 0 },
      });
      const call = (i: number) =>
        headFirst(
          proxy.socketPath,
          "/v1/messages",
          asking(
            `zz-call-${i} <fake-script>[{"text":"x","usage":{"input_tokens":1,"output_tokens":100}}]</fake-script>`,
          ),
        );
      const three = [0, 1, 2].map(call);
      await Promise.all(three.map((c) => c.admitted)); // all let in while the budget held
      expect(await three[0]!.finish()).toBe(200); // spends 100 output tokens of 5
      expect(await Promise.all(three.slice(1).map((c) => c.finish()))).toEqual([0, 0]);
      expect(await call(3).finish()).toBe(400); // a new one: budget exhausted
      const u = proxy.take();
      expect(u.outputTokens).toBe(100);
      expect(u.budgetExhausted).toMatch(/100 output tokens of 5/);
      const reached = model.requests.filter((r) => /zz-call-[12]/.test(JSON.stringify(r.body)));
      expect(reached).toEqual([]);
    } finally {
      await proxy.close();
    }
  });
});

describe("model proxy: what a budget counts", () => {
  /** An upstream answering as the Messages API may: cache tokens in usage, gzip when asked. */
  async function upstreamOf(
    usage: Record<string, number>,
    opts: { gzipAlways?: boolean } = {},
  ): Promise<http.Server & { url: string }> {
    const answer = JSON.stringify({
      id: "msg_1",
      type: "message",
      role: "assistant",
      model: "claude-sonnet-4-5",
      content: [{ type: "text", text: "ok" }],
      stop_reason: "end_turn",
      usage,
    });
    const server = http.createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        const gzip =
          opts.gzipAlways || String(req.headers["accept-encoding"] ?? "").includes("gzip");
        res.writeHead(200, {
          "content-type": "application/json",
          ...(gzip ? { "content-encoding": "gzip" } : {}),
        });
        res.end(gzip ? gzipSync(answer) : answer);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return Object.assign(server, {
      url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    });
  }
  const call = (
    socketPath: string,
    headers: Record<string, string> = {},
    target = "/v1/messages",
  ) =>
    new Promise<number>((resolve, reject) => {
      const req = http.request(
        {
          socketPath,
          path: target,
          method: "POST",
          headers: { "content-type": "application/json", ...headers },
        },
        (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        },
      );
      req.on("error", reject);
      req.end(JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 1, messages: [] }));
    });
  const budget = (maxUsd: number) => ({
    maxUsd,
    maxInputTokens: 0,
    maxOutputTokens: 0,
    spent: { usd: 0, inputTokens: 0, outputTokens: 0 },
  });

  it("meters prompt-cache tokens, priced from the input price: a budget they spend stops the next call", async () => {
    const usage = {
      input_tokens: 3,
      output_tokens: 1,
      cache_creation_input_tokens: 90_000,
      cache_read_input_tokens: 90_000,
    };
    const upstream = await upstreamOf(usage);
    using dir = tempDir();
    const proxy = await proxyOf(upstream.url, dir.path);
    try {
      proxy.limit(budget(0.01));
      expect(await call(proxy.socketPath)).toBe(200);
      expect(await call(proxy.socketPath)).toBe(400); // the budget is spent
      const u = proxy.take();
      expect(u).toMatchObject({
        inputTokens: 3,
        outputTokens: 1,
        cacheCreationInputTokens: 90_000,
        cacheReadInputTokens: 90_000,
      });
      const p = DEFAULT_PRICES["claude-sonnet-4"]!;
      const cached = 90_000 * (CACHE_WRITE_FACTOR + CACHE_READ_FACTOR);
      expect(u.costUsd).toBeCloseTo(((3 + cached) * p.input + 1 * p.output) / 1e6, 6);
    } finally {
      await proxy.close();
      upstream.close();
    }
  });

  it("meters an answer the agent asked to have compressed: the proxy asks for none", async () => {
    const upstream = await upstreamOf({ input_tokens: 10_000, output_tokens: 20_000 });
    using dir = tempDir();
    const proxy = await proxyOf(upstream.url, dir.path);
    try {
      proxy.limit(budget(0.01));
      expect(await call(proxy.socketPath, { "accept-encoding": "gzip" })).toBe(200);
      expect(await call(proxy.socketPath, { "accept-encoding": "gzip" })).toBe(400);
      expect(proxy.take()).toMatchObject({ inputTokens: 10_000, outputTokens: 20_000 });
    } finally {
      await proxy.close();
      upstream.close();
    }
  });

  it("charges an answer it cannot read (compressed against its asking) the most it could cost", async () => {
    const upstream = await upstreamOf({ input_tokens: 1, output_tokens: 1 }, { gzipAlways: true });
    using dir = tempDir();
    const proxy = await proxyOf(upstream.url, dir.path);
    try {
      proxy.limit(budget(0));
      expect(await call(proxy.socketPath)).toBe(200);
      const request = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 1, messages: [] });
      // Its max_tokens of output; its input unknown: a token a byte of its request.
      expect(proxy.take()).toMatchObject({
        inputTokens: Buffer.byteLength(request),
        outputTokens: 1,
      });
    } finally {
      await proxy.close();
      upstream.close();
    }
  });

  it("meters the whole answer of a call its agent leaves before the usage comes", async () => {
    // An SSE answer whose usage (message_delta) waits until the test lets it go.
    let release = (): unknown => undefined;
    let upstreamFinished = false;
    const event = (name: string, data: unknown) =>
      `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
    const upstream = http.createServer((req, res) => {
      req.resume();
      if (req.url?.includes("count_tokens")) return void res.end('{"input_tokens":1}');
      res.on("finish", () => (upstreamFinished = true));
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(
        event("message_start", {
          type: "message_start",
          message: { model: "claude-sonnet-4-5", usage: { input_tokens: 10, output_tokens: 1 } },
        }) +
          event("content_block_delta", {
            type: "content_block_delta",
            index: 0,
            delta: { type: "text_delta", text: "the whole answer" },
          }) +
          event("content_block_stop", { type: "content_block_stop", index: 0 }),
      );
      release = () =>
        res.end(
          event("message_delta", { type: "message_delta", usage: { output_tokens: 50_000 } }) +
            event("message_stop", { type: "message_stop" }),
        );
    });
    await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(upstream.address() as net.AddressInfo).port}`;
    using dir = tempDir();
    const proxy = await proxyOf(url, dir.path);
    try {
      proxy.limit({ ...budget(0), maxOutputTokens: 1000 });
      // The agent reads the answer's content and leaves before its usage.
      const got = await new Promise<string>((resolve) => {
        let text = "";
        const req = http.request(
          { socketPath: proxy.socketPath, path: "/v1/messages", method: "POST" },
          (res) =>
            res.on("data", (c: Buffer) => {
              text += c.toString();
              if (text.includes("content_block_stop")) req.destroy();
            }),
        );
        req.on("error", () => undefined);
        req.on("close", () => resolve(text));
        req.end(JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 64000, messages: [] }));
      });
      expect(got).toContain("the whole answer");
      // A call made after it is answered after the proxy saw the first one's agent leave.
      expect(await call(proxy.socketPath, {}, "/v1/messages/count_tokens")).toBe(200);
      expect(proxy.inFlight()).toBe(1); // read on, unseen
      release();
      await vi.waitFor(() => expect(proxy.inFlight()).toBe(0), { timeout: 5000 });
      expect(upstreamFinished).toBe(true);
      expect(await call(proxy.socketPath)).toBe(400); // 50,000 output tokens of 1,000
      expect(proxy.take()).toMatchObject({ inputTokens: 10, outputTokens: 50_000 });
    } finally {
      await proxy.close();
      upstream.close();
    }
  });
});
