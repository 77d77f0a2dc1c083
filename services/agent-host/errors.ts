import { Code } from "@connectrpc/connect";
import { withCode } from "../shared/errors.ts";

/** The agent does not exist: NOT_FOUND. */
export class UnknownAgentError extends withCode(Code.NotFound) {}

/** The agent is running a task, or is not ready (starting, lost, stopping): FAILED_PRECONDITION. */
export class AgentBusyError extends withCode(Code.FailedPrecondition) {}
/** A joined node that cannot renew its lease takes no task (FAILED_PRECONDITION). */
export class FencedError extends withCode(Code.FailedPrecondition) {}
