// `buf curl` (from node_modules) as any user would call Conductor with it: gRPC over a Unix
// socket, the schema by server reflection, at its default message limits.
import { execFile } from "node:child_process";
import path from "node:path";
import { ROOT } from "./harness.ts";

const BUF = path.join(ROOT, "node_modules", ".bin", "buf");

/**
 * Calls `method` ("/package.Service/Method") on the server at `socket` with the JSON `body`;
 * resolves to buf's stdout (one JSON object per response message), rejects with its stderr.
 */
export function bufCurl(
  socket: string,
  method: string,
  body: unknown,
  maxBuffer = 64 * 1024 * 1024,
): Promise<string> {
  const args = ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--unix-socket", socket];
  args.push("-d", JSON.stringify(body), `http://localhost${method}`);
  return new Promise((resolve, reject) =>
    execFile(BUF, args, { maxBuffer }, (e, stdout, stderr) =>
      e ? reject(new Error(`buf curl ${method}: ${e.message}: ${stderr}`)) : resolve(stdout),
    ),
  );
}
