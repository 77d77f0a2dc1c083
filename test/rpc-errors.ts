import { ConnectError, type Code } from "@connectrpc/connect";

/** The gRPC code and message a call fails with; throws if it succeeds. */
export async function failureOf(p: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await p;
  } catch (e) {
    const err = ConnectError.from(e);
    return { code: err.code, message: err.rawMessage };
  }
  throw new Error("expected the call to fail");
}
