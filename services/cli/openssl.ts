import { execFile } from "node:child_process";

/** OpenSSL could not be run, or a command of it failed: what it said. */
export class OpensslError extends Error {
  override name = "OpensslError";
}

/**
 * Runs the system's `openssl ARGS` (no shell), writing `input` to its standard input, and
 * resolves with its standard output; rejects with OpensslError carrying its message when it
 * cannot start or fails. Key material goes through files and pipes, never ARGS.
 */
export function openssl(args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile("openssl", args, { maxBuffer: 4 << 20 }, (error, stdout, stderr) => {
      if (!error) return resolve(stdout);
      const code = (error as { code?: unknown }).code;
      const why =
        code === "ENOENT"
          ? "cannot run openssl: it is not installed (or not on PATH); conductor certs needs OpenSSL 3"
          : `openssl ${args[0]} failed: ${stderr.trim() || error.message}`;
      reject(new OpensslError(why, { cause: error }));
    });
    child.stdin?.on("error", () => undefined); // a failed start is reported by the callback
    child.stdin?.end(input ?? "");
  });
}
