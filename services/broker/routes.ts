import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { BrokerNodeService, BrokerService } from "../../gen/conductor/v1/broker_pb.js";
import { PEER } from "../shared/authz.ts";
import { callerOf } from "./auth.ts";
import type { Broker } from "./broker.ts";
import { agentCredential, ORCHESTRATOR_ID } from "./credentials.ts";

/**
 * The BrokerService handlers: thin, over the Broker domain object. Auth is an interceptor;
 * the Broker's domain errors become statuses at the shared error edge (see errors.ts).
 */
export function brokerRoutes(broker: Broker) {
  return (router: ConnectRouter) =>
    router.service(BrokerService, {
      send(req, ctx) {
        return broker.send(callerOf(ctx), {
          sender: req.sender,
          receiver: req.destination.case === "receiver" ? req.destination.value : undefined,
          topic: req.destination.case === "topic" ? req.destination.value : undefined,
          type: req.type,
          payload: req.payload,
          correlationId: req.correlationId,
          ttlSeconds: req.ttlSeconds,
        });
      },
      async *subscribe(req, ctx) {
        const messages = await broker.subscribe(
          callerOf(ctx),
          { agentId: req.agentId, topics: req.topics, prefetch: req.prefetch },
          ctx.signal,
        );
        for await (const message of messages) yield { message };
      },
      async receive(req, ctx) {
        const input = { agentId: req.agentId, topics: req.topics, maxMessages: req.maxMessages };
        return {
          messages: await broker.receive(
            callerOf(ctx),
            { ...input, waitMs: req.waitMs },
            ctx.signal,
          ),
        };
      },
      async ack(req, ctx) {
        return { acked: await broker.ack(callerOf(ctx), req.messageIds) };
      },
      request(req, ctx) {
        return broker.request(
          callerOf(ctx),
          {
            sender: req.sender,
            receiver: req.receiver,
            payload: req.payload,
            correlationId: req.correlationId,
            timeoutMs: req.timeoutMs,
          },
          ctx.signal,
        );
      },
      reply(req, ctx) {
        return broker.reply(callerOf(ctx), {
          correlationId: req.correlationId,
          payload: req.payload,
          isError: req.isError,
          requester: req.requester,
        });
      },
      async unsubscribe(req, ctx) {
        await broker.unsubscribe(callerOf(ctx), { topics: req.topics, agentId: req.agentId });
        return {};
      },
      async listAgents(_req, ctx) {
        return { agents: await broker.listAgents(callerOf(ctx)) };
      },
      async registerAgent(req, ctx) {
        await broker.register(callerOf(ctx), req.agentId, req.topics);
        return {};
      },
    });
}

/**
 * The BrokerNodeService handler: a joined node's agents' credentials, for an `agent-host`
 * identity over mutual TLS and only for agents named `<its name>:…`; the agent is registered.
 */
export function brokerNodeRoutes(broker: Broker, secret: Buffer) {
  return (router: ConnectRouter) =>
    router.service(BrokerNodeService, {
      async issueAgentCredential(req, ctx) {
        const peer = ctx.values.get(PEER);
        if (peer.kind !== "tls" || peer.identity.role !== "agent-host") {
          throw new ConnectError(
            "agent credentials are issued only to an agent-host identity over mutual TLS (a node on this machine reads broker.key)",
            Code.PermissionDenied,
          );
        }
        const prefix = `${peer.identity.name}:`;
        if (!req.agentId.startsWith(prefix) || req.agentId.length === prefix.length) {
          throw new ConnectError(
            `${peer.identity.spiffeId} may have credentials only for its own agents ("${prefix}…"), not for "${req.agentId.slice(0, 200)}"`,
            Code.PermissionDenied,
          );
        }
        const credential = agentCredential(secret, req.agentId);
        await broker.register({ id: ORCHESTRATOR_ID, orchestrator: true }, req.agentId, []);
        return { credential };
      },
    });
}
