import { Code } from "@connectrpc/connect";
import { quote } from "../../shared/quote.ts";
import type { Cache } from "./cache.ts";
import { badInput, notReady, WorkspaceError } from "./errors.ts";
import { GitFailure, lastLine, type Git } from "./git.ts";

/**
 * `git format-patch --stdout --binary -M base..head` of the cache, as git writes it: chunks
 * are pulled (git waits while the consumer does not read), so a patch of any size is never
 * held whole. FAILED_PRECONDITION (before the first chunk) when the cache or a commit is gone;
 * a git failure ends the stream with an INTERNAL WorkspaceError.
 */
export async function* formatPatch(
  git: Git,
  cache: Cache,
  base: string,
  head: string,
  signal?: AbortSignal,
): AsyncGenerator<Buffer> {
  for (const c of [base, head])
    if (!/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(c))
      throw badInput(`commit ${quote(c)} is not a full commit id (40 or 64 lowercase hex digits)`);
  const where = `repository ${quote(cache.source.display)}`;
  if (!(await cache.exists()))
    throw notReady(
      `this node holds no clone of ${where} (removed, or its tasks ran on another node)`,
      true,
    );
  for (const c of [base, head])
    if ((await cache.commitOf(c, signal)) !== c)
      throw notReady(`commit ${c} is not in this node's clone of ${where}`, true);
  try {
    yield* git.stream(
      ["format-patch", "--stdout", "--binary", "-M", "--no-color", `${base}..${head}`],
      cache.call(signal),
    );
  } catch (e) {
    if (!(e instanceof GitFailure)) throw e;
    throw new WorkspaceError(
      `git format-patch of ${where} failed (${lastLine(e.stderr)})`,
      Code.Internal,
      { cause: e },
    );
  }
}
