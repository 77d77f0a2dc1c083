import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import type { HandlerContext } from "@connectrpc/connect";
import { BrokerService } from "../../gen/conductor/v1/broker_pb.js";
import { verifyCredential, type Identity } from "./credentials.ts";

/** Where the auth interceptor leaves the caller's identity for the handlers. */
export const IDENTITY = createContextKey<Identity | undefined>(undefined, {
  description: "the Broker caller's authenticated identity",
});

const BEARER = /^Bearer\s+(\S+)\s*$/i;

/**
 * Checks every BrokerService call's `authorization: Bearer <credential>` against the
 * Broker's key and hands the identity to the handlers; a missing, malformed or forged
 * credential is UNAUTHENTICATED. Health and reflection stay open, as on every server.
 */
export function authInterceptor(secret: Buffer): Interceptor {
  // Credentials seen before skip the HMAC (bounded: a flood of forged ones is never cached).
  const verified = new Map<string, Identity>();
  const verify = (token: string): Identity | undefined => {
    const known = verified.get(token);
    if (known) return known;
    const identity = verifyCredential(secret, token);
    if (identity && verified.size < 10_000) verified.set(token, identity);
    return identity;
  };
  return (next) => async (req) => {
    if (req.service.typeName !== BrokerService.typeName) return next(req);
    const header = req.header.get("authorization");
    if (!header) {
      throw new ConnectError(
        "no credential: send the metadata `authorization: Bearer <credential>` (an agent's credential is in its credential file)",
        Code.Unauthenticated,
      );
    }
    const token = BEARER.exec(header)?.[1];
    const identity = token ? verify(token) : undefined;
    if (!identity) {
      throw new ConnectError(
        "the credential is not valid on this Broker (malformed, forged, or made with another broker.key)",
        Code.Unauthenticated,
      );
    }
    req.contextValues.set(IDENTITY, identity);
    return next(req);
  };
}

/** The authenticated caller of a handler (the interceptor guarantees there is one). */
export function callerOf(ctx: HandlerContext): Identity {
  const identity = ctx.values.get(IDENTITY);
  if (!identity) throw new ConnectError("the call was not authenticated", Code.Unauthenticated);
  return identity;
}

/** A client interceptor that adds a credential to every call. */
export function credentialInterceptor(credential: string | (() => string)): Interceptor {
  return (next) => async (req) => {
    req.header.set(
      "authorization",
      `Bearer ${typeof credential === "function" ? credential() : credential}`,
    );
    return next(req);
  };
}
