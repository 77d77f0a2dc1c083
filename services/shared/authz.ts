import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import type { Identity, Role } from "./tls.ts";

/**
 * Who is calling: over a Unix socket, whoever could open it (the socket's file mode is the
 * boundary); over TCP, the identity of the verified client certificate (mutual TLS); through
 * the web console on loopback, a browser, which holds the console's token or not.
 */
export type Peer =
  { kind: "unix" } | { kind: "tls"; identity: Identity } | { kind: "console"; token: boolean };

/** The caller of the current RPC, set by the listener that took the connection. */
export const PEER = createContextKey<Peer>({ kind: "unix" });

/** Why a console call without the console's token is refused (`method`: service/Method). */
export function tokenNeeded(method: string): string {
  return `${method} needs the console's token: open the console at the URL \`conductor up\` printed (…/?token=…)`;
}

/** Services any verified identity may call (they tell nothing and change nothing). */
const OPEN_SERVICES = new Set([
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
]);

/** What each role may call over TCP: whole services by name. */
const GRANTS: Record<Role, ReadonlySet<string>> = {
  client: new Set(["conductor.v1.OrchestratorService"]),
  "agent-host": new Set([
    "conductor.v1.NodeService",
    "conductor.v1.BrokerService",
    "conductor.v1.BrokerNodeService",
  ]),
  orchestrator: new Set(["conductor.v1.AgentHostService", "conductor.v1.BrokerService"]),
  broker: new Set(),
};

/** NodeService calls name the node they speak for in `name`: it must be the caller's own. */
const SPEAKS_FOR_NODE = "conductor.v1.NodeService";

/**
 * The one authorisation interceptor of every server: a call over TCP is allowed only when the
 * caller's role is granted the service (a `client` the OrchestratorService, an `agent-host`
 * the NodeService under its own name, an `orchestrator` the AgentHostService); else
 * PERMISSION_DENIED naming the identity and the method. A console call needs the console's token
 * (else UNAUTHENTICATED) and may reach only what a `client` may. Calls over the Unix socket pass.
 */
export function authorize(): Interceptor {
  return (next) => async (req) => {
    const peer = req.contextValues.get(PEER);
    if (peer.kind === "unix") return next(req);
    const service = req.service.typeName;
    const method = `${service}/${req.method.name}`;
    if (peer.kind === "console") {
      if (!peer.token) {
        throw new ConnectError(tokenNeeded(method), Code.Unauthenticated);
      }
      if (!GRANTS.client.has(service)) {
        throw new ConnectError(`the console may not call ${method}`, Code.PermissionDenied);
      }
      return next(req);
    }
    const who = peer.identity.spiffeId;
    if (!OPEN_SERVICES.has(service) && !GRANTS[peer.identity.role]?.has(service)) {
      throw new ConnectError(`${who} may not call ${method}`, Code.PermissionDenied);
    }
    if (service === SPEAKS_FOR_NODE && !req.stream) {
      const name = (req.message as { name?: unknown }).name;
      if (name !== peer.identity.name) {
        throw new ConnectError(
          `${who} may speak only for node "${peer.identity.name}", not for "${String(name)}" (${method})`,
          Code.PermissionDenied,
        );
      }
    }
    return next(req);
  };
}
