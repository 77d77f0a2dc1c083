import { EngineUnreachableError as ContractUnreachable } from "../runtime.ts";

/** The engine could not be reached at its socket; says where and how to start it. */
export class EngineUnreachableError extends ContractUnreachable {
  readonly socketPath: string;
  constructor(message: string, socketPath: string, cause: unknown) {
    super(message, socketPath, cause);
    this.socketPath = socketPath;
  }
}

/** The image is not in the engine (nothing is ever pulled); says how to build it. */
export class ImageMissingError extends Error {
  override name = "ImageMissingError";
  readonly image: string;
  constructor(message: string, image: string, cause?: unknown) {
    super(message, { cause });
    this.image = image;
  }
}

/** How the engine answered a failed call: its HTTP status and message, when there is one. */
export interface EngineFailure {
  statusCode?: number;
  message: string;
  code?: string;
}

/** Reads dockerode's error shapes (HTTP status + JSON body, or a socket errno). */
export function engineFailure(e: unknown): EngineFailure {
  const o = (typeof e === "object" && e !== null ? e : {}) as Record<string, unknown>;
  const json = o["json"] as { message?: unknown } | string | null | undefined;
  const body =
    typeof json === "string" ? json : typeof json?.message === "string" ? json.message : undefined;
  const out: EngineFailure = { message: (body ?? String(o["message"] ?? e)).trim() };
  if (typeof o["statusCode"] === "number") out.statusCode = o["statusCode"];
  if (typeof o["code"] === "string") out.code = o["code"];
  return out;
}

const UNREACHABLE = new Set([
  "ENOENT",
  "ECONNREFUSED",
  "EACCES",
  "ECONNRESET",
  "EPIPE",
  "ENOTSOCK",
  "ETIMEDOUT",
  // A Unix socket's backlog is full: its engine is frozen (stopped, or wedged) and accepts none.
  "EAGAIN",
]);

/** True when the failure is the socket, not the engine's answer. */
export function isUnreachable(e: unknown): boolean {
  const code = engineFailure(e).code;
  return code !== undefined && UNREACHABLE.has(code);
}

/** True when the engine answered 404 (no such container, image or exec). */
export function isNotFound(e: unknown): boolean {
  return engineFailure(e).statusCode === 404;
}
