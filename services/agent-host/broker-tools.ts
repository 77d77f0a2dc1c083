import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentOutputSchema, type AgentOutput } from "../../gen/conductor/v1/task_pb.js";
import { MCP_ALLOWED_TOOLS, type AgentBroker, type BrokerAccess } from "../broker/access.ts";
import type { RunSettings } from "./run.ts";

/** How long a run's start waits for the Broker before running without its tools. */
export const BROKER_CHECK_MS = 3000;

/** What one run gets of the Broker: its tools, or a notice why they are not offered. */
export type BrokerTools =
  | { offered: true; settings: Pick<RunSettings, "alwaysAllowedTools" | "extraArgs"> }
  | { offered: false; notice: string };

/** Decides for each run whether it gets the Broker's tools; see brokerTools. */
export type BrokerToolsCheck = (broker: AgentBroker, agentId: string) => Promise<BrokerTools>;

/**
 * Decides at a run's start whether its CLI is offered the Broker's `mcp__conductor__*` tools:
 * only when the Broker answers now and takes this AgentHost's key, proven by (re-)registering
 * the agent — which also makes an agent known to a Broker started after its AgentHost. A run
 * without them gets a notice in Conductor's words instead of tools that fail on every call.
 * One client (one connection, made again after a Broker restart) serves every check.
 */
export function brokerTools(access: BrokerAccess, timeoutMs = BROKER_CHECK_MS): BrokerToolsCheck {
  return async (broker, agentId) => {
    try {
      // An agent set up while a remote Broker did not answer gets its credential now.
      if (!broker.credential) broker.credential = await access.credential(agentId, timeoutMs);
      await access.register(agentId, timeoutMs);
    } catch (e) {
      return { offered: false, notice: whyNot(access.where, ConnectError.from(e)) };
    }
    broker.registered = true;
    return {
      offered: true,
      settings: { alwaysAllowedTools: [MCP_ALLOWED_TOOLS], extraArgs: broker.cliArgs },
    };
  };
}

/** The run's notice, as an output line of type `conductor` (see AgentOutput.type). */
export function noticeOutput(text: string): AgentOutput {
  return create(AgentOutputSchema, { type: "conductor", text });
}

function whyNot(socket: string, e: ConnectError): string {
  const without = "this run has no mcp__conductor__* tools (messages to and from other agents)";
  if (e.code === Code.Unauthenticated) {
    return `The Broker at ${socket} refuses this AgentHost's key (${e.rawMessage}): ${without}. The Broker and the AgentHost must share storage.data_dir, where broker.key is.`;
  }
  return `No Broker answers at ${socket} (${e.rawMessage}): ${without}. Start one with \`conductor broker\` (with the same --socket-dir and --data-dir), or run every service with \`conductor up\`; runs started after it answers get the tools.`;
}
