// A gRPC server for the clients' own tests (test/netns.test.ts): grpc-js, raw bytes, no proto.
//
//     node test/clients/echo-server.ts LISTEN [CA,CERT,KEY]
//
// LISTEN is `unix:///path` or `ip:port` (port 0 for a free one). With CA,CERT,KEY (PEM files)
// it speaks mutual TLS and refuses a client without a certificate signed by CA. It prints
// `{"ready":true,"port":N}` once bound. /test.Echo/Echo answers the request's bytes;
// /test.Echo/Repeat streams them back three times.
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";

const bytes = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
const method = (name: string, responseStream: boolean) => ({
  path: `/test.Echo/${name}`,
  requestStream: false,
  responseStream,
  requestSerialize: bytes.serialize,
  requestDeserialize: bytes.deserialize,
  responseSerialize: bytes.serialize,
  responseDeserialize: bytes.deserialize,
});

const [listen, tls] = process.argv.slice(2);
if (!listen) throw new Error("usage: echo-server.ts LISTEN [CA,CERT,KEY]");
let credentials = grpc.ServerCredentials.createInsecure();
if (tls) {
  const [ca, cert, key] = tls.split(",").map((file) => readFileSync(file));
  if (!ca || !cert || !key) throw new Error("echo-server.ts: TLS takes CA,CERT,KEY");
  credentials = grpc.ServerCredentials.createSsl(
    ca,
    [{ cert_chain: cert, private_key: key }],
    true,
  );
}

const server = new grpc.Server();
server.addService(
  { Echo: method("Echo", false), Repeat: method("Repeat", true) },
  {
    Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) =>
      done(null, call.request),
    Repeat: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      for (let i = 0; i < 3; i++) call.write(call.request);
      call.end();
    },
  },
);
server.bindAsync(listen, credentials, (error, port) => {
  if (error) throw error;
  console.log(JSON.stringify({ ready: true, port }));
});
process.once("SIGTERM", () => server.forceShutdown());
