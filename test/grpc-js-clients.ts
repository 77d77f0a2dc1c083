// grpc-js clients of Conductor's services, from the .proto files, at grpc-js's default limits
// (a 4 MiB message at most): what a user's own grpc-js client would see.
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { ROOT } from "./harness.ts";

/** A RunTaskResponse as @grpc/proto-loader decodes it (only what the test reads). */
export interface JsRunStep {
  output?: { type: string; truncated: boolean };
  wholePiece?: { text: string };
  outcome?: { state: string; result?: { truncated: boolean } };
}

/**
 * A grpc-js client of `service` (in package conductor.v1) from `protoFile`, on a Unix socket,
 * at grpc-js's default limits; `oneofs` adds the name of each oneof's set case.
 */
export function grpcJsClient<T extends grpc.Client>(
  protoFile: string,
  service: string,
  socket: string,
  oneofs = false,
): T {
  const def = protoLoader.loadSync(protoFile, {
    includeDirs: [path.join(ROOT, "proto")],
    longs: String,
    enums: String,
    defaults: true,
    oneofs,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    conductor: { v1: Record<string, new (address: string, creds: grpc.ChannelCredentials) => T> };
  };
  return new pkg.conductor.v1[service]!(`unix://${socket}`, grpc.credentials.createInsecure());
}

/** A grpc-js client of an AgentHost at grpc-js's default limits. */
export function grpcJsAgentHost(socket: string) {
  return grpcJsClient<
    grpc.Client & {
      RunTask(req: {
        agentId: string;
        taskId: string;
        attempt: number;
        spec: { prompt: string; allowedTools: string[] };
      }): grpc.ClientReadableStream<JsRunStep>;
    }
  >("conductor/v1/agent_host.proto", "AgentHostService", socket, true);
}
