import { Code } from "@connectrpc/connect";
import { DomainError } from "../shared/errors.ts";

/** The agent does not exist: NOT_FOUND. */
export class UnknownAgentError extends DomainError {
  constructor(message: string) {
    super(message, Code.NotFound);
  }
}

/** The agent is running a task, or is not ready (starting, lost, stopping): FAILED_PRECONDITION. */
export class AgentBusyError extends DomainError {
  constructor(message: string) {
    super(message, Code.FailedPrecondition);
  }
}
