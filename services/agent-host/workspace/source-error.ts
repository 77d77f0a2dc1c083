import { quote } from "../../shared/quote.ts";
import { badInput, notReady, WorkspaceError } from "./errors.ts";
import { GitFailure, lastLine } from "./git.ts";
import type { Source } from "./source.ts";

/**
 * A failed fetch as a person can act on it: the source is not git, does not exist, refuses us
 * or cannot be reached.
 */
export function sourceError(source: Source, e: unknown): WorkspaceError {
  if (e instanceof WorkspaceError) return e;
  if (!(e instanceof GitFailure)) throw e;
  const where = `repository ${quote(source.display)}`;
  const why = lastLine(e.stderr).replace(/^(fatal|error):\s*/i, "");
  const s = e.stderr;
  if (/transport '.*' not allowed|unsupported protocol/i.test(s))
    return badInput(
      `${where} uses a transport that is not allowed: use file://, git://, ssh:// or https://`,
    );
  if (/dubious ownership|unsafe repository/i.test(s))
    return notReady(
      `${where} belongs to another user and git refuses to read it: add it to safe.directory in the global git config of the AgentHost's user, or give a repository of that user`,
      true,
      e,
    );
  if (/does not appear to be a git repository|not a git repository/i.test(s))
    return notReady(
      source.local
        ? `${where} is not a git repository: give the path of a repository or bare repository`
        : `${where} does not exist or is not a git repository: check the URL`,
      true,
      e,
    );
  if (/not found|does not exist|not exported|No such file or directory/i.test(s))
    return notReady(`${where} does not exist (${why}): check the path or URL`, true, e);
  if (
    /Authentication failed|Permission denied|could not read Username|terminal prompts disabled/i.test(
      s,
    )
  )
    return notReady(
      `${where} refused this node (${why}): give the AgentHost's user access to it`,
      false,
      e,
    );
  if (
    /unable to connect|Connection refused|Could not resolve|timed out|unreachable|Could not read from remote/i.test(
      s,
    )
  )
    return notReady(
      `${where} cannot be reached (${why}): check the URL, and that its server is up and reachable from this node`,
      false,
      e,
    );
  return notReady(
    `fetching ${where} failed (${why}): check that it is a git repository this node can read`,
    false,
    e,
  );
}
