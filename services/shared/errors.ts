import { Code, ConnectError } from "@connectrpc/connect";
import { quote } from "./quote.ts";

/** Shorthand for the one error type on the wire: a code and a message a person can act on. */
export function invalid(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}

/** NOT_FOUND naming what was looked for. */
export function notFound(what: string, id: string): ConnectError {
  return new ConnectError(`${what} ${quote(id)} not found`, Code.NotFound);
}

/** FAILED_PRECONDITION: the request is fine but the thing is not in a state to do it. */
export function precondition(message: string): ConnectError {
  return new ConnectError(message, Code.FailedPrecondition);
}

/**
 * A named failure a service raises where the cause is known. The error edge (`errorEdge`)
 * turns it into its gRPC status with this message, keeping the cause for logs and traces.
 */
export class DomainError extends Error {
  readonly code: Code;
  constructor(message: string, code: Code, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/**
 * A DomainError class with one gRPC code, for errors that need nothing but a message:
 * `class NotAllowedError extends withCode(Code.PermissionDenied) {}`.
 */
export function withCode(code: Code) {
  return class extends DomainError {
    constructor(message: string, options?: { cause?: unknown }) {
      super(message, code, options);
    }
  };
}

/** The disk under a store is full: RESOURCE_EXHAUSTED, naming the folder. Retry after freeing space. */
export class StorageFull extends DomainError {
  constructor(where: string, cause?: unknown) {
    super(
      `the disk holding ${where} is full; free space there and retry (nothing stored was changed)`,
      Code.ResourceExhausted,
      { cause },
    );
  }
}

/** A container engine or peer service cannot be reached: UNAVAILABLE, with its own message. */
export class Unreachable extends DomainError {
  constructor(what: string, cause?: unknown) {
    super(`${what} cannot be reached: ${messageOf(cause)}`, Code.Unavailable, { cause });
  }
}

/** SQLite's SQLITE_FULL (13) result code, or ENOSPC/EDQUOT from the file system. */
export function isDiskFull(e: unknown): boolean {
  const err = e as { errcode?: number; code?: string; message?: string } | undefined;
  if (!err) return false;
  if (err.code === "ENOSPC" || err.code === "EDQUOT") return true;
  // node:sqlite reports extended result codes; the primary code is the low byte.
  if (typeof err.errcode === "number" && (err.errcode & 0xff) === 13) return true;
  return /database or disk is full/.test(err.message ?? "");
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * The one place an error becomes a gRPC status: a ConnectError passes as it is; a DomainError
 * gets its code; a full disk is RESOURCE_EXHAUSTED; a socket error is UNAVAILABLE; anything
 * else is INTERNAL "internal error" with the cause kept (and logged by the edge).
 */
export function toStatus(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  if (e instanceof DomainError) {
    return new ConnectError(e.message, e.code, undefined, undefined, e.cause ?? e);
  }
  if (isDiskFull(e)) return toStatus(new StorageFull("the data folder", e));
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (
    code === "ECONNREFUSED" ||
    code === "ECONNRESET" ||
    code === "EPIPE" ||
    code === "ETIMEDOUT"
  ) {
    return new ConnectError(messageOf(e), Code.Unavailable, undefined, undefined, e);
  }
  return new ConnectError("internal error", Code.Internal, undefined, undefined, e);
}
