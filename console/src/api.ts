// The Orchestrator's API as the browser reaches it: the Connect protocol on the console's
// own origin, every call carrying the tab's token. No other API exists for the console.
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { OrchestratorService } from "../../gen/conductor/v1/orchestrator_pb.js";

/** A client of conductor.v1.OrchestratorService. */
export type Orchestrator = Client<typeof OrchestratorService>;

/**
 * Adds `Authorization: Bearer <token>` to every request, and reports a refusal for want of
 * it (Code.Unauthenticated) to `onUnauthenticated` before rethrowing it.
 */
export function bearer(token: string | undefined, onUnauthenticated: () => void): Interceptor {
  return (next) => async (req) => {
    if (token) req.header.set("Authorization", `Bearer ${token}`);
    try {
      return await next(req);
    } catch (e) {
      if (ConnectError.from(e).code === Code.Unauthenticated) onUnauthenticated();
      throw e;
    }
  };
}

/** The Orchestrator at `origin` (the console's own), over the binary Connect protocol. */
export function orchestrator(
  origin: string,
  token: string | undefined,
  onUnauthenticated: () => void,
): Orchestrator {
  const transport = createConnectTransport({
    baseUrl: origin,
    useBinaryFormat: true,
    interceptors: [bearer(token, onUnauthenticated)],
  });
  return createClient(OrchestratorService, transport);
}
