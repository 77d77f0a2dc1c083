// Server reflection against a real HTTP/2 server on a Unix socket, checked
// with the real `buf curl` and with @grpc/grpc-js (v1 and v1alpha paths), on both server
// stacks: serveUnix's (@grpc/grpc-js) and connect-node's (the TCP listener's).
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import http2 from "node:http2";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";
import {
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import type {
  ServerReflectionRequest,
  ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { HealthRegistry, registerHealth } from "./health.ts";
import { registerReflection } from "./reflection.ts";
import { serveUnix, type UnixServer } from "./transport.ts";

const run = promisify(execFile);
const buf = path.resolve(import.meta.dirname, "../../node_modules/.bin/buf");
let dir: string;
let socket: string;

/** Serves OrchestratorService (no methods) with health and reflection on `socket`. */
async function serveOn(stack: "grpc-js" | "connect-node"): Promise<() => Promise<void>> {
  if (stack === "grpc-js") {
    const server: UnixServer = await serveUnix({
      socketPath: socket,
      services: [OrchestratorService],
      routes: (router) => router.service(OrchestratorService, {}),
    });
    return () => server.close();
  }
  const routes = (router: Parameters<typeof registerReflection>[0]) => {
    router.service(OrchestratorService, {});
    registerHealth(router, new HealthRegistry());
    registerReflection(router, [OrchestratorService]);
  };
  const server = http2.createServer(connectNodeAdapter({ routes }));
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  return async () => {
    for (const s of sessions) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
}

async function bufCurl(...args: string[]): Promise<string> {
  const base = ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--unix-socket", socket];
  const { stdout } = await run(buf, [...base, ...args], { timeout: 30_000 });
  return stdout;
}

/** One request/response round trip over a raw grpc-js bidi stream. */
async function reflect(
  req: MessageInitShape<typeof ServerReflectionRequestSchema>,
  service = "grpc.reflection.v1.ServerReflection",
): Promise<ServerReflectionResponse> {
  const client = new grpc.Client(`unix:${socket}`, grpc.credentials.createInsecure());
  try {
    const call = client.makeBidiStreamRequest<ServerReflectionRequest, ServerReflectionResponse>(
      `/${service}/ServerReflectionInfo`,
      (m) => Buffer.from(toBinary(ServerReflectionRequestSchema, m)),
      (b) => fromBinary(ServerReflectionResponseSchema, b),
    );
    const res = new Promise<ServerReflectionResponse>((resolve, reject) => {
      call.once("data", resolve);
      call.once("error", reject);
    });
    call.write(create(ServerReflectionRequestSchema, req));
    call.end();
    return await res;
  } finally {
    client.close();
  }
}

function fileNames(res: ServerReflectionResponse): string[] {
  expect(res.messageResponse.case).toBe("fileDescriptorResponse");
  const files =
    res.messageResponse.case === "fileDescriptorResponse" ? res.messageResponse.value : undefined;
  return (files?.fileDescriptorProto ?? []).map(
    (b) => fromBinary(FileDescriptorProtoSchema, b).name,
  );
}

describe.each(["grpc-js", "connect-node"] as const)("on %s", (stack) => {
  let close: () => Promise<void>;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "reflection-test-"));
    socket = path.join(dir, "s.sock");
    close = await serveOn(stack);
  });

  afterAll(async () => {
    await close();
    rmSync(dir, { recursive: true, force: true });
  });

  describe("reflection via buf curl", () => {
    it("lists services", async () => {
      const out = (await bufCurl("--list-services", "http://localhost")).split("\n");
      expect(out).toContain("conductor.v1.OrchestratorService");
      expect(out).toContain("grpc.health.v1.Health");
      expect(out).toContain("grpc.reflection.v1.ServerReflection");
    });

    it("lists methods", async () => {
      const out = (await bufCurl("--list-methods", "http://localhost")).split("\n");
      expect(out).toContain("conductor.v1.OrchestratorService/SubmitTask");
      expect(out).toContain("grpc.health.v1.Health/Check");
    });

    it("calls Health/Check using reflected schemas", async () => {
      const out = await bufCurl(
        "--reflect",
        "-d",
        "{}",
        "http://localhost/grpc.health.v1.Health/Check",
      );
      expect(JSON.parse(out)).toEqual({ status: "SERVING" });
    });
  });

  describe("reflection via grpc-js", () => {
    it("returns a service's file with its transitive imports", async () => {
      const names = fileNames(
        await reflect({
          messageRequest: {
            case: "fileContainingSymbol",
            value: "conductor.v1.OrchestratorService",
          },
        }),
      );
      expect(names[0]).toBe("conductor/v1/orchestrator.proto");
      expect(names).toEqual(
        expect.arrayContaining(["conductor/v1/task.proto", "google/protobuf/timestamp.proto"]),
      );
    });

    it("resolves methods, nested and dependency types, and filenames", async () => {
      const sym = (value: string) =>
        reflect({ messageRequest: { case: "fileContainingSymbol", value } });
      expect(fileNames(await sym("conductor.v1.OrchestratorService.SubmitTask"))[0]).toBe(
        "conductor/v1/orchestrator.proto",
      );
      expect(fileNames(await sym("grpc.health.v1.HealthCheckResponse.ServingStatus"))[0]).toBe(
        "grpc/health/v1/health.proto",
      );
      expect(fileNames(await sym("google.protobuf.Timestamp"))[0]).toBe(
        "google/protobuf/timestamp.proto",
      );
      const byName = await reflect({
        messageRequest: { case: "fileByFilename", value: "conductor/v1/task.proto" },
      });
      expect(fileNames(byName)).toEqual([
        "conductor/v1/task.proto",
        "google/protobuf/struct.proto", // TaskResult.structured
        "google/protobuf/timestamp.proto",
      ]);
    });

    it("answers NOT_FOUND for unknown symbols and files", async () => {
      for (const messageRequest of [
        { case: "fileContainingSymbol", value: "no.such.Thing" },
        { case: "fileByFilename", value: "no/such.proto" },
      ] as const) {
        const res = await reflect({ messageRequest });
        expect(res.messageResponse).toMatchObject({
          case: "errorResponse",
          value: { errorCode: 5 },
        });
      }
    });

    it("also serves the legacy v1alpha name, which describes itself", async () => {
      const res = await reflect(
        { messageRequest: { case: "listServices", value: "" } },
        "grpc.reflection.v1alpha.ServerReflection",
      );
      const list =
        res.messageResponse.case === "listServicesResponse"
          ? res.messageResponse.value.service
          : [];
      expect(list.map((s) => s.name)).toEqual(
        expect.arrayContaining([
          "conductor.v1.OrchestratorService",
          "grpc.reflection.v1alpha.ServerReflection",
        ]),
      );
      const self = await reflect({
        messageRequest: {
          case: "fileContainingSymbol",
          value: "grpc.reflection.v1alpha.ServerReflection",
        },
      });
      expect(fileNames(self)).toEqual(["grpc/reflection/v1alpha/reflection.proto"]);
    });
  });
});
