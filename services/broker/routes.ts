import type { ConnectRouter } from "@connectrpc/connect";
import { BrokerService } from "../../gen/conductor/v1/broker_pb.js";
import { callerOf } from "./auth.ts";
import type { Broker } from "./broker.ts";
import { toConnectError } from "./errors.ts";

/** Runs a handler body, translating Broker domain errors at the edge. */
async function edge<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw toConnectError(e);
  }
}

/** The BrokerService handlers: thin, over the Broker domain object (auth is an interceptor). */
export function brokerRoutes(broker: Broker) {
  return (router: ConnectRouter) =>
    router.service(BrokerService, {
      send(req, ctx) {
        return edge(() =>
          broker.send(callerOf(ctx), {
            sender: req.sender,
            receiver: req.destination.case === "receiver" ? req.destination.value : undefined,
            topic: req.destination.case === "topic" ? req.destination.value : undefined,
            type: req.type,
            payload: req.payload,
            correlationId: req.correlationId,
            ttlSeconds: req.ttlSeconds,
          }),
        );
      },
      async *subscribe(req, ctx) {
        const messages = await edge(() =>
          broker.subscribe(
            callerOf(ctx),
            { agentId: req.agentId, topics: req.topics, prefetch: req.prefetch },
            ctx.signal,
          ),
        );
        try {
          for await (const message of messages) yield { message };
        } catch (e) {
          throw toConnectError(e);
        }
      },
      receive(req, ctx) {
        return edge(async () => ({
          messages: await broker.receive(
            callerOf(ctx),
            {
              agentId: req.agentId,
              topics: req.topics,
              maxMessages: req.maxMessages,
              waitMs: req.waitMs,
            },
            ctx.signal,
          ),
        }));
      },
      ack(req, ctx) {
        return edge(async () => ({ acked: await broker.ack(callerOf(ctx), req.messageIds) }));
      },
      request(req, ctx) {
        return edge(() =>
          broker.request(
            callerOf(ctx),
            {
              sender: req.sender,
              receiver: req.receiver,
              payload: req.payload,
              correlationId: req.correlationId,
              timeoutMs: req.timeoutMs,
            },
            ctx.signal,
          ),
        );
      },
      reply(req, ctx) {
        return edge(() =>
          broker.reply(callerOf(ctx), {
            correlationId: req.correlationId,
            payload: req.payload,
            isError: req.isError,
            requester: req.requester,
          }),
        );
      },
      unsubscribe(req, ctx) {
        return edge(async () => {
          await broker.unsubscribe(callerOf(ctx), { topics: req.topics, agentId: req.agentId });
          return {};
        });
      },
      listAgents(_req, ctx) {
        return edge(async () => ({ agents: await broker.listAgents(callerOf(ctx)) }));
      },
      registerAgent(req, ctx) {
        return edge(async () => {
          await broker.register(callerOf(ctx), req.agentId, req.topics);
          return {};
        });
      },
    });
}
