// What the console says when a call fails: the API's own message, and for a missing or
// wrong token, how to get a good one.
import { Code, ConnectError } from "@connectrpc/connect";

/** What a person should read for a failed call. */
export const UNAUTHENTICATED =
  "This console has no valid token: open the URL printed by `conductor up` (its ready line, `console`).";

/** The message of an API error as a person should read it. */
export function errorText(e: unknown): string {
  const err = ConnectError.from(e);
  if (err.code === Code.Unauthenticated) return UNAUTHENTICATED;
  const code = Code[err.code] ?? String(err.code);
  return `${err.rawMessage || err.message} (${code.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase()})`;
}

/** Whether an error is only the caller's own abort (a view closed): nothing to show. */
export function aborted(e: unknown, signal: AbortSignal): boolean {
  return signal.aborted || ConnectError.from(e).code === Code.Canceled;
}
