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

/** A grpc-js client of an AgentHost at grpc-js's default limits. */
export function grpcJsAgentHost(socket: string) {
  const def = protoLoader.loadSync("conductor/v1/agent_host.proto", {
    includeDirs: [path.join(ROOT, "proto")],
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  type Host = grpc.Client & {
    RunTask(req: {
      agentId: string;
      taskId: string;
      attempt: number;
      spec: { prompt: string; allowedTools: string[] };
    }): grpc.ClientReadableStream<JsRunStep>;
  };
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    conductor: {
      v1: { AgentHostService: new (address: string, creds: grpc.ChannelCredentials) => Host };
    };
  };
  return new pkg.conductor.v1.AgentHostService(
    `unix://${socket}`,
    grpc.credentials.createInsecure(),
  );
}
