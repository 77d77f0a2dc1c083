// The error edge on a real gRPC server over a Unix socket: what a handler throws reaches the
// caller as the right status with a message a person can act on; an unknown fault is logged.
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import { StorageFull, Unreachable } from "./errors.ts";
import { createLogger } from "./log.ts";
import { serveUnix, unixTransport, type UnixServer } from "./transport.ts";

let dir: string;
let server: UnixServer;
let client: Client<typeof OrchestratorService>;
let fault: unknown;
const logged: string[] = [];

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "error-edge-"));
  server = await serveUnix({
    socketPath: path.join(dir, "s.sock"),
    services: [OrchestratorService],
    log: createLogger("info", {}, (line) => logged.push(line)),
    routes: (router) =>
      router.service(OrchestratorService, {
        getTask: () => {
          throw fault;
        },
        async *watchTask() {
          yield { event: { taskId: "t", seq: 1n } };
          throw fault;
        },
      }),
  });
  client = createClient(OrchestratorService, unixTransport(server.socketPath));
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function statusOf(call: () => Promise<unknown>): Promise<ConnectError> {
  try {
    await call();
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error("the call succeeded");
}

const sqliteFull = Object.assign(new Error("database or disk is full"), {
  code: "ERR_SQLITE_ERROR",
  errcode: 13,
});

describe("the error edge", () => {
  const cases: [string, unknown, Code, RegExp][] = [
    ["a named full disk", new StorageFull("/data"), Code.ResourceExhausted, /disk holding \/data/],
    ["SQLite's SQLITE_FULL", sqliteFull, Code.ResourceExhausted, /disk .* is full/],
    [
      "ENOSPC",
      Object.assign(new Error("write"), { code: "ENOSPC" }),
      Code.ResourceExhausted,
      /full/,
    ],
    [
      "an engine that cannot be reached",
      new Unreachable("the docker engine", new Error("connect ECONNREFUSED /var/run/docker.sock")),
      Code.Unavailable,
      /docker engine cannot be reached: connect ECONNREFUSED/,
    ],
    [
      "a ConnectError",
      new ConnectError("bad id", Code.InvalidArgument),
      Code.InvalidArgument,
      /bad id/,
    ],
    ["anything else", new Error("secret detail"), Code.Internal, /^\[internal\] internal error$/],
  ];
  for (const [name, thrown, code, message] of cases) {
    it(`maps ${name} on a unary call`, async () => {
      fault = thrown;
      const err = await statusOf(() => client.getTask({ id: "x" }));
      expect(err.code).toBe(code);
      expect(err.message).toMatch(message);
    });
  }

  it("maps a fault that ends a server stream, after what was already sent", async () => {
    fault = sqliteFull;
    const seen: bigint[] = [];
    const err = await statusOf(async () => {
      for await (const r of client.watchTask({ id: "t" })) seen.push(r.event!.seq);
    });
    expect(seen).toEqual([1n]);
    expect(err.code).toBe(Code.ResourceExhausted);
  });

  it("logs the cause of an INTERNAL failure, which the caller does not see", async () => {
    fault = new Error("the cause a maintainer needs");
    logged.length = 0;
    await statusOf(() => client.getTask({ id: "x" }));
    expect(logged.join("")).toContain("the cause a maintainer needs");
  });
});
