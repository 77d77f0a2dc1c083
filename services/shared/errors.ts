import { Code, ConnectError } from "@connectrpc/connect";

/** Shorthand for the one error type on the wire: a code and a message a person can act on. */
export function invalid(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}

/** NOT_FOUND naming what was looked for. */
export function notFound(what: string, id: string): ConnectError {
  return new ConnectError(`${what} "${id}" not found`, Code.NotFound);
}

/** FAILED_PRECONDITION: the request is fine but the thing is not in a state to do it. */
export function precondition(message: string): ConnectError {
  return new ConnectError(message, Code.FailedPrecondition);
}

/** Translates a Node system error (from a socket, a spawn, a file) into a ConnectError, keeping the cause. */
export function fromSystemError(cause: unknown, context: string): ConnectError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  const message = `${context}: ${(cause as Error | undefined)?.message ?? String(cause)}`;
  switch (code) {
    case "ECONNREFUSED":
    case "ENOENT":
    case "ECONNRESET":
    case "EPIPE":
      return new ConnectError(message, Code.Unavailable, undefined, undefined, cause);
    case "EACCES":
    case "EPERM":
      return new ConnectError(message, Code.PermissionDenied, undefined, undefined, cause);
    default:
      return ConnectError.from(cause, Code.Internal);
  }
}
