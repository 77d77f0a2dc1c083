import type { ConnectRouter } from "@connectrpc/connect";
import { BrokerService } from "../../gen/conductor/v1/broker_pb.js";
import { callerOf } from "./auth.ts";
import type { Broker } from "./broker.ts";

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
