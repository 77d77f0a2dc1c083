// gRPC server reflection (grpc.reflection.v1 and the legacy v1alpha name),
// answered from the generated descriptors, so grpcurl and `buf curl
// --reflect` can call our servers without a copy of the .proto files.
// connect-node ships no reflection service, hence this one.
import { clone, createFileRegistry, toBinary } from "@bufbuild/protobuf";
import type { DescFile, DescService, MessageInitShape } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import type { ConnectRouter } from "@connectrpc/connect";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import type {
  ServerReflectionRequest,
  ServerReflectionResponseSchema,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";

type Answer = MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"];

/**
 * The v1alpha protocol is byte-for-byte the v1 one under another package.
 * Build a real descriptor for it (so reflection can describe itself under
 * both names) by renaming the v1 file.
 */
function v1alphaService(): DescService {
  const proto = clone(FileDescriptorProtoSchema, ServerReflection.file.proto);
  const rename = (s: string) => s.replace(".grpc.reflection.v1.", ".grpc.reflection.v1alpha.");
  proto.name = "grpc/reflection/v1alpha/reflection.proto";
  proto.package = "grpc.reflection.v1alpha";
  for (const message of proto.messageType) {
    for (const field of message.field) field.typeName = rename(field.typeName);
  }
  for (const method of proto.service.flatMap((s) => s.method)) {
    method.inputType = rename(method.inputType);
    method.outputType = rename(method.outputType);
  }
  const service = createFileRegistry(proto, () => undefined).getService(
    "grpc.reflection.v1alpha.ServerReflection",
  );
  if (!service) throw new Error("failed to build grpc.reflection.v1alpha descriptor");
  return service;
}

/** Every symbol we can answer for, mapped to the file that defines it. */
function indexFiles(roots: DescFile[]) {
  const byName = new Map<string, DescFile>();
  const bySymbol = new Map<string, DescFile>();
  const byExtension = new Map<string, DescFile>(); // "extendee:number"
  const extensionNumbers = new Map<string, number[]>(); // message -> extension numbers
  const numbersOf = (message: string) => {
    const numbers = extensionNumbers.get(message) ?? [];
    extensionNumbers.set(message, numbers);
    return numbers;
  };
  const visit = (file: DescFile) => {
    if (byName.has(file.proto.name)) return;
    byName.set(file.proto.name, file);
    file.dependencies.forEach(visit);
    for (const type of nestedTypes(file)) {
      bySymbol.set(type.typeName, file);
      if (type.kind === "service") {
        for (const m of type.methods) bySymbol.set(`${type.typeName}.${m.name}`, file);
      } else if (type.kind === "message") {
        for (const f of type.fields) bySymbol.set(`${type.typeName}.${f.name}`, file);
        numbersOf(type.typeName);
      } else if (type.kind === "extension") {
        byExtension.set(`${type.extendee.typeName}:${type.number}`, file);
        numbersOf(type.extendee.typeName).push(type.number);
      }
    }
  };
  roots.forEach(visit);
  return { byName, bySymbol, byExtension, extensionNumbers };
}

/** The file first, then its transitive imports: what clients expect. */
function withDependencies(file: DescFile): Uint8Array[] {
  const seen = new Set<string>();
  const out: Uint8Array[] = [];
  const add = (f: DescFile) => {
    if (seen.has(f.proto.name)) return;
    seen.add(f.proto.name);
    out.push(toBinary(FileDescriptorProtoSchema, f.proto));
    f.dependencies.forEach(add);
  };
  add(file);
  return out;
}

function notFound(what: string): Answer {
  return {
    case: "errorResponse",
    value: { errorCode: Code.NotFound, errorMessage: `${what} not found` },
  };
}

/**
 * Mount ServerReflection (v1 and v1alpha) answering for `services` plus
 * Health and ServerReflection themselves.
 */
export function registerReflection(router: ConnectRouter, services: DescService[]): void {
  const alpha = v1alphaService();
  const all = [...services, Health, ServerReflection, alpha];
  const names = [...new Set(all.map((s) => s.typeName))];
  const index = indexFiles(all.map((s) => s.file));

  const files = (file: DescFile | undefined, what: string): Answer =>
    file
      ? { case: "fileDescriptorResponse", value: { fileDescriptorProto: withDependencies(file) } }
      : notFound(what);

  const answer = (req: ServerReflectionRequest): Answer => {
    const { messageRequest: r } = req;
    switch (r.case) {
      case "fileByFilename":
        return files(index.byName.get(r.value), `file ${r.value}`);
      case "fileContainingSymbol":
        return files(index.bySymbol.get(r.value), `symbol ${r.value}`);
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = r.value;
        const key = `${containingType}:${extensionNumber}`;
        return files(index.byExtension.get(key), `extension ${key}`);
      }
      case "allExtensionNumbersOfType": {
        // Like grpc-go: a known message type answers, usually with no
        // numbers; only unknown types are NOT_FOUND.
        const numbers = index.extensionNumbers.get(r.value);
        if (!numbers) return notFound(`message type ${r.value}`);
        return {
          case: "allExtensionNumbersResponse",
          value: { baseTypeName: r.value, extensionNumber: numbers },
        };
      }
      case "listServices":
        return {
          case: "listServicesResponse",
          value: { service: names.map((name) => ({ name })) },
        };
      default:
        return {
          case: "errorResponse",
          value: { errorCode: Code.InvalidArgument, errorMessage: "empty request" },
        };
    }
  };

  async function* info(requests: AsyncIterable<ServerReflectionRequest>) {
    for await (const req of requests) {
      yield { validHost: req.host, originalRequest: req, messageResponse: answer(req) };
    }
  }

  router.service(ServerReflection, { serverReflectionInfo: info });
  // Same handler and v1 message schemas (identical on the wire); only the
  // URL path, derived from method.parent.typeName, differs.
  const method = ServerReflection.method.serverReflectionInfo;
  router.rpc({ ...method, parent: alpha }, info);
}
