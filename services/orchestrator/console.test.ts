// The web console's server: its token, its origin checks, its files, mutual TLS off loopback,
// and the API a live view reads (WatchTasks, ListTaskEvents, WatchTask after a seq, ListTasks
// by group and labels), against an Orchestrator served on real sockets.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import https from "node:https";
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { TaskSpecSchema, TaskState, type Task } from "../../gen/conductor/v1/task_pb.js";
import { makeCerts } from "../../test/certs.ts";
import {
  started,
  until,
  World,
  type FakeAgentHost,
  type Play,
} from "../../test/orchestrator-world.ts";
import { silentLogger } from "../shared/log.ts";
import { TlsMaterial } from "../shared/tls.ts";
import { closeStalled, serveConsole, type ConsoleServer } from "./console.ts";
import { MAX_PATCH_STREAMS } from "./orchestrator.ts";
import { orchestratorRoutes } from "./routes.ts";

/** Starts, prints `n` lines of output, and succeeds. */
const chatty = (n: number): Play =>
  async function* (req, _ctx, host) {
    yield started(req, host);
    for (let i = 1; i <= n; i++) {
      yield { kind: { case: "output", value: { type: "assistant", text: `line ${i}` } } };
    }
    host.setAgent("");
    yield {
      kind: { case: "outcome", value: { state: TaskState.SUCCEEDED, result: { text: "done" } } },
    };
  };

/** Starts and succeeds with a change on a git workspace (head commit "head1"). */
const changed: Play = async function* (req, _ctx, host) {
  yield started(req, host);
  host.setAgent("");
  const change = { repository: "repo", branch: "b", baseCommit: "base1", headCommit: "head1" };
  yield {
    kind: {
      case: "outcome",
      value: { state: TaskState.SUCCEEDED, result: { text: "changed", change } },
    },
  };
};

const bearer =
  (token: string): Interceptor =>
  (next) =>
  (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };

/** A raw HTTP request to the console, as a page or another program would send it. */
function request(
  url: string,
  opts: { method?: string; path?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: u.hostname,
        port: u.port,
        method: opts.method ?? "GET",
        path: opts.path ?? "/",
        headers: opts.headers ?? {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode!,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
          }),
        );
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}

/** Sends `text` as it is to the console (its port) and gives all it answers until it closes. */
function rawHttp(port: string, text: string): Promise<string> {
  const socket = net.connect(Number(port), "127.0.0.1");
  let answer = "";
  socket.on("data", (c: Buffer) => (answer += c.toString()));
  socket.write(text);
  return new Promise((resolve, reject) => {
    socket.once("error", reject);
    socket.once("close", () => resolve(answer));
  });
}

describe("the web console", () => {
  let world: World;
  let host: FakeAgentHost;
  let web: ConsoleServer;
  let assets: string;
  const token = "t".repeat(43);

  beforeAll(async () => {
    world = new World();
    host = await world.host(world.hostSocket);
    await world.startOrchestrator();
    assets = path.join(world.dir, "dist");
    mkdirSync(path.join(assets, "assets"), { recursive: true });
    writeFileSync(path.join(assets, "index.html"), "<!doctype html><title>Conductor</title>");
    writeFileSync(path.join(assets, "assets", "app-1a2b.js"), "console.log(1)");
    web = await serveConsole({
      listen: "127.0.0.1:0",
      routes: orchestratorRoutes(world.orch),
      log: silentLogger,
      assets,
      token,
    });
  });
  afterAll(async () => {
    await web?.close();
    await world?.[Symbol.asyncDispose]();
  });

  const base = () => new URL(web.url).origin;
  const client = (interceptors: Interceptor[] = []) =>
    createClient(
      OrchestratorService,
      createConnectTransport({ baseUrl: base(), httpVersion: "1.1", interceptors }),
    );

  it("prints a loopback URL that holds its token", () => {
    expect(web.url).toBe(`${base()}/?token=${token}`);
    expect(base()).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it("answers the API only to a caller with its token", async () => {
    const refused = await client()
      .listTasks({})
      .catch((e: unknown) => ConnectError.from(e));
    expect(refused).toBeInstanceOf(ConnectError);
    expect((refused as ConnectError).code).toBe(Code.Unauthenticated);
    expect((refused as ConnectError).rawMessage).toMatch(/token.*conductor up/);
    const wrong = await client([bearer("x".repeat(43))])
      .submitTask({ spec: { prompt: "sneaky" } })
      .catch((e: unknown) => ConnectError.from(e));
    expect((wrong as ConnectError).code).toBe(Code.Unauthenticated);
    expect(world.orch.store.list([], 10, undefined).tasks).toHaveLength(0);

    const { task } = await client([bearer(token)]).submitTask({ spec: { prompt: "hello" } });
    expect((await world.task(task!.id)).spec?.prompt).toBe("hello");
    // The same refusal for the Connect protocol's JSON, as a page's fetch() would send it.
    const raw = await request(base(), {
      method: "POST",
      path: "/conductor.v1.OrchestratorService/ListTasks",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(raw.status).toBe(401);
    expect(JSON.parse(raw.body)).toMatchObject({ code: "unauthenticated" });
    // A misspelt field or state name is refused, naming it, not ignored.
    for (const body of ['{"states":["TASK_STATE_BOGUS"]}', '{"page_sise":5}', '{"states":[999]}']) {
      const misspelt = await request(base(), {
        method: "POST",
        path: "/conductor.v1.OrchestratorService/ListTasks",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body,
      });
      expect(misspelt.status, body).toBe(400);
      expect(JSON.parse(misspelt.body), body).toMatchObject({ code: "invalid_argument" });
      expect(misspelt.body).toMatch(/BOGUS|page_sise|999 is no TaskState/);
    }
  });

  it("answers a call without the token at its headers, not waiting for a body that dribbles", async () => {
    const { port } = new URL(base());
    const stored = world.orch.store.list([], 10, undefined).tasks.length;
    // Headers promising a megabyte, then one byte of it: the body never comes. The console
    // answers and closes, long before its 30 s request timeout.
    const answer = await rawHttp(
      port,
      `POST /conductor.v1.OrchestratorService/SubmitTask HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
        "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{",
    );
    expect(answer).toMatch(/^HTTP\/1\.1 401 /);
    expect(answer).toMatch(/connection: close/i);
    expect(answer).toMatch(/"code":"unauthenticated".*SubmitTask needs the console's token/);
    expect(world.orch.store.list([], 10, undefined).tasks).toHaveLength(stored);
  });

  it("closes a GET that sends a body at once, and a connection whose reader stopped reading", async () => {
    const { port } = new URL(base());
    const get = await rawHttp(
      port,
      `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 1000000\r\n\r\nx`,
    );
    expect(get).toMatch(/^HTTP\/1\.1 400 [^]*a GET carries no body/);

    // A reader that pipelines requests for a big file and never reads: its connection goes,
    // an idle one stays.
    const big = Buffer.alloc(8 * 1024 * 1024, "x");
    const server = http.createServer((_req, res) => res.end(big));
    const timer = closeStalled(server, 100);
    const closed = new Promise<void>((resolve) =>
      server.on("connection", (s: net.Socket) => s.once("close", () => resolve())),
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port: p } = server.address() as net.AddressInfo;
    const idle = net.connect(p, "127.0.0.1");
    await new Promise((resolve) => idle.once("connect", resolve));
    const stuck = net.connect(p, "127.0.0.1");
    stuck.pause();
    stuck.write(`GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`.repeat(20));
    await closed;
    expect(idle.destroyed).toBe(false);
    idle.destroy();
    stuck.destroy();
    clearInterval(timer);
    await new Promise((resolve) => server.close(resolve));
  });

  it("refuses another site's page and a DNS-rebound host name, token or not", async () => {
    const call = (headers: Record<string, string>) =>
      request(base(), {
        method: "POST",
        path: "/conductor.v1.OrchestratorService/SubmitTask",
        headers: {
          "content-type": "application/json",
          authorization: `Bearer ${token}`,
          ...headers,
        },
        body: JSON.stringify({ spec: { prompt: "from elsewhere" } }),
      });
    const port = new URL(base()).port;
    const before = world.orch.store.list([], 100, undefined).tasks.length;
    const evil = await call({ origin: "http://evil.example" });
    expect(evil.status).toBe(403);
    expect(evil.body).toMatch(/evil\.example.*refused/);
    const rebound = await call({ host: `evil.example:${port}` });
    expect(rebound.status).toBe(403);
    expect(world.orch.store.list([], 100, undefined).tasks).toHaveLength(before);
    // Two Host headers, the first naming loopback, are refused, not read as the first.
    const twice = await rawHttp(
      port,
      `POST /conductor.v1.OrchestratorService/SubmitTask HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
        `Host: evil.example:${port}\r\nAuthorization: Bearer ${token}\r\n` +
        "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    expect(twice).toMatch(/^HTTP\/1\.1 403 [^]*names several/);
    expect(world.orch.store.list([], 100, undefined).tasks).toHaveLength(before);
    // Its own page's origin passes.
    const own = await call({ origin: base() });
    expect(own.status).toBe(200);
  });

  it("may reach only what a client may: no other service", async () => {
    const r = await request(base(), {
      method: "POST",
      path: "/conductor.v1.NodeService/RegisterNode",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ name: "intruder" }),
    });
    expect(r.status).not.toBe(200);
  });

  it("serves its built files, its own routes' page, and nothing outside them", async () => {
    const index = await request(base());
    expect(index.status).toBe(200);
    expect(index.body).toContain("<title>Conductor</title>");
    expect(index.headers["content-type"]).toMatch(/^text\/html/);
    expect(index.headers["cache-control"]).toBe("no-cache");
    expect(index.headers["content-security-policy"]).toMatch(/default-src 'self'/);
    expect(index.headers["referrer-policy"]).toBe("no-referrer");
    expect((await request(base(), { path: "/tasks/abc" })).body).toContain("<title>");
    const js = await request(base(), { path: "/assets/app-1a2b.js" });
    expect(js.headers["content-type"]).toMatch(/^text\/javascript/);
    expect(js.headers["cache-control"]).toMatch(/immutable/);
    expect((await request(base(), { path: "/assets/missing.js" })).status).toBe(404);
    const escape = await request(base(), { path: "/../../../../etc/passwd" });
    expect(escape.body).not.toMatch(/root:/);
    expect((await request(base(), { path: "/..%2f..%2fetc%2fpasswd.txt" })).status).toBe(404);
    const dotted = await request(base(), { path: "/%2e%2e/%2e%2e/etc/hostname" });
    expect(dotted.body).toContain("<title>Conductor</title>"); // a route of the page, no file
    expect((await request(base(), { method: "DELETE" })).status).toBe(405);
  });

  it("says how to build it when it is not built", async () => {
    await using bare = await serveConsole({
      listen: "127.0.0.1:0",
      routes: orchestratorRoutes(world.orch),
      log: silentLogger,
      assets: path.join(world.dir, "no-such-build"),
    });
    const r = await request(bare.url);
    expect(r.status).toBe(503);
    expect(r.body).toMatch(/npm run build:console/);
    expect(bare.url).toMatch(/\?token=[A-Za-z0-9_-]{43}$/);
  });

  it("streams every task's state changes to a live view, and pages a long history backwards", async () => {
    const c = client([bearer(token)]);
    const aborts = new AbortController();
    const seen: Task[] = [];
    let opened = 0;
    const watching = (async () => {
      for await (const m of c.watchTasks({}, { signal: aborts.signal })) {
        if (m.task) seen.push(m.task);
        else opened++;
      }
    })().catch(() => undefined);
    await until(() => opened === 1, "the live stream's first message: it is open");
    host.plays = [chatty(700)];
    const { task } = await c.submitTask({ spec: { prompt: "chatty", labels: { team: "a" } } });
    const id = task!.id;
    await until(
      () => seen.some((t) => t.id === id && t.state === TaskState.SUCCEEDED),
      "the chatty task's end on the live stream",
    );
    const states = seen.filter((t) => t.id === id).map((t) => t.state);
    expect(states[0]).toBe(TaskState.QUEUED);
    expect(states.at(-1)).toBe(TaskState.SUCCEEDED);
    aborts.abort();
    await watching;
    await until(() => world.orch.events.allWatchers === 0, "the live stream to close");

    // The newest page first, then older pages, each in order, until the first event.
    const newest = await c.listTaskEvents({ id, pageSize: 300 });
    expect(newest.events).toHaveLength(300);
    expect(newest.more).toBe(true);
    const seqs = newest.events.map((e) => Number(e.seq));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    const last = newest.events.at(-1)!;
    expect(last.kind.case).toBe("stateChange");
    let before = newest.events[0]!.seq;
    let all = newest.events.length;
    for (let i = 0; i < 10; i++) {
      const page = await c.listTaskEvents({ id, beforeSeq: before, pageSize: 300 });
      all += page.events.length;
      expect(page.events.at(-1)!.seq).toBeLessThan(before);
      before = page.events[0]!.seq;
      if (!page.more) break;
    }
    expect(before).toBe(1n);
    expect(all).toBe(Number(last.seq));

    // WatchTask from a seq streams only what comes after it; from the final one, nothing.
    const after = async (seq: bigint) => {
      const tail: bigint[] = [];
      for await (const m of c.watchTask({ id, afterSeq: seq })) tail.push(m.event!.seq);
      return tail;
    };
    expect(await after(last.seq - 3n)).toEqual([last.seq - 2n, last.seq - 1n, last.seq]);
    expect(await after(last.seq)).toEqual([]);

    const unknown = await c
      .listTaskEvents({ id: "no-such-task" })
      .catch((e: unknown) => ConnectError.from(e));
    expect((unknown as ConnectError).code).toBe(Code.NotFound);
    const tooBig = await c
      .listTaskEvents({ id, pageSize: 5000 })
      .catch((e: unknown) => ConnectError.from(e));
    expect((tooBig as ConnectError).code).toBe(Code.InvalidArgument);
  });

  it("sends at most MAX_PATCH_STREAMS patches at once, and others again once they end", async () => {
    const c = client([bearer(token)]);
    host.plays = [changed];
    const { task } = await c.submitTask({ spec: { prompt: "change something" } });
    await until(
      () => world.orch.store.get(task!.id)?.state === TaskState.SUCCEEDED,
      "the task to succeed with a change",
    );
    const readers = Array.from({ length: MAX_PATCH_STREAMS }, () => new AbortController());
    for (const r of readers) {
      const stream = c.getTaskPatch({ taskId: task!.id }, { signal: r.signal });
      const first = await stream[Symbol.asyncIterator]().next();
      if (first.done) throw new Error("the patch ended at once");
      expect(new TextDecoder().decode(first.value.chunk)).toBe("head1");
    }
    const refused = await (async () => {
      for await (const _ of c.getTaskPatch({ taskId: task!.id })) return "sent";
      return "ended";
    })().catch((e: unknown) => ConnectError.from(e));
    expect(refused).toBeInstanceOf(ConnectError);
    expect((refused as ConnectError).code).toBe(Code.ResourceExhausted);
    expect((refused as ConnectError).rawMessage).toMatch(/try again/);
    readers[0]!.abort();
    await until(
      () => world.orch.patchesSending < MAX_PATCH_STREAMS,
      "the first reader's stream to end",
    );
    const last = new AbortController();
    const again = c.getTaskPatch({ taskId: task!.id }, { signal: last.signal });
    expect((await again[Symbol.asyncIterator]().next()).done).toBe(false);
    for (const r of [...readers, last]) r.abort();
    await until(() => host.patchesOpen === 0, "every patch stream on the host to end");
  });

  it("lists the tasks of a group and the tasks with given labels", async () => {
    const c = client([bearer(token)]);
    host.plays = [chatty(0)];
    const { group } = await c.submitTaskGroup({
      spec: {
        name: "batch",
        members: [
          { name: "one", spec: { prompt: "one" } },
          { name: "two", spec: { prompt: "two" } },
        ],
      },
    });
    const ofGroup = await c.listTasks({ groupId: group!.id });
    expect(ofGroup.tasks.map((t) => t.spec?.prompt).sort()).toEqual(["one", "two"]);
    const spec = (team: string, prompt: string) =>
      create(TaskSpecSchema, { prompt, labels: { team, tier: "gold" } });
    await c.submitTask({ spec: spec("b", "b1") });
    await c.submitTask({ spec: spec("c", "c1") });
    await c.submitTask({ spec: spec("b", "b2") });
    const teamB = await c.listTasks({ labels: { team: "b", tier: "gold" } });
    expect(teamB.tasks.map((t) => t.spec?.prompt)).toEqual(["b2", "b1"]);
    const paged = await c.listTasks({ labels: { team: "b" }, pageSize: 1 });
    expect(paged.tasks.map((t) => t.spec?.prompt)).toEqual(["b2"]);
    const rest = await c.listTasks({ labels: { team: "b" }, pageToken: paged.nextPageToken });
    expect(rest.tasks.map((t) => t.spec?.prompt)).toEqual(["b1"]);
    expect(rest.nextPageToken).toBe("");
    const none = await c.listTasks({ labels: { team: "nobody" } });
    expect(none.tasks).toEqual([]);
    const tooMany = await c
      .listTasks({
        labels: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, ""])),
      })
      .catch((e: unknown) => ConnectError.from(e));
    expect((tooMany as ConnectError).code).toBe(Code.InvalidArgument);
  });
});

describe("the web console off loopback", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), "conductor-console-tls-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("refuses to bind without TLS, and then asks every caller for a client certificate", async () => {
    await using world = new World();
    await world.host(world.hostSocket);
    await world.startOrchestrator();
    const opts = {
      listen: "0.0.0.0:0",
      routes: orchestratorRoutes(world.orch),
      log: silentLogger,
      assets: path.join(dir, "none"),
    };
    await expect(serveConsole(opts)).rejects.toThrow(/not a loopback address.*tls\.ca_file/);

    const certs = await makeCerts(path.join(dir, "ca"), [
      { role: "orchestrator", name: "orch", ips: ["127.0.0.1"] },
      { role: "client", name: "alice" },
      { role: "agent-host", name: "node1" },
    ]);
    const f = certs.files("orch");
    using material = TlsMaterial.load(f, silentLogger);
    await using web = await serveConsole({ ...opts, material });
    expect(web.url).toMatch(/^https:\/\/0\.0\.0\.0:\d+\/$/);
    const port = Number(new URL(web.url).port);
    const tlsOf = (name: string) => ({
      ca: readFileSync(certs.caFile),
      cert: readFileSync(certs.files(name).certFile),
      key: readFileSync(certs.files(name).keyFile),
    });
    const as = (name: string) =>
      createClient(
        OrchestratorService,
        createConnectTransport({
          baseUrl: `https://127.0.0.1:${port}`,
          httpVersion: "1.1",
          nodeOptions: tlsOf(name),
        }),
      );
    const { tasks } = await as("alice").listTasks({});
    expect(tasks).toEqual([]);
    const node = await as("node1")
      .listTasks({})
      .catch((e: unknown) => ConnectError.from(e));
    expect((node as ConnectError).code).toBe(Code.PermissionDenied);
    // No certificate: no connection at all.
    const anonymous = await new Promise<string>((resolve) => {
      const req = https.request(
        { host: "127.0.0.1", port, path: "/", ca: readFileSync(certs.caFile) },
        (res) => resolve(`answered ${res.statusCode}`),
      );
      req.on("error", (e) => resolve(`refused: ${e.message}`));
      req.end();
    });
    expect(anonymous).toMatch(/^refused/);
    // With a certificate, still no other site's page: a browser sends its Origin.
    const fromPage = (origin: string) =>
      new Promise<number>((resolve, reject) => {
        const req = https.request(
          {
            host: "127.0.0.1",
            port,
            method: "POST",
            path: "/conductor.v1.OrchestratorService/ListTasks",
            headers: { "content-type": "application/json", origin },
            ...tlsOf("alice"),
          },
          (res) => {
            res.resume();
            resolve(res.statusCode!);
          },
        );
        req.on("error", reject);
        req.end("{}");
      });
    expect(await fromPage("https://evil.example")).toBe(403);
    expect(await fromPage(`https://127.0.0.1:${port}`)).toBe(200);
  });
});
