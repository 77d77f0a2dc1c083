// The Broker as tools for a Claude Code agent (send_message, request, read_messages, reply,
// list_agents): their names, input schemas and descriptions as the model sees them, and what
// each call does and answers. Served over MCP by mcp-http.ts; they call the Broker as one agent.
import { toJson } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type CallOptions, type Client } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { MessageType, type BrokerService, type Message } from "../../gen/conductor/v1/broker_pb.js";

const TYPES = [
  "task_request",
  "task_response",
  "status_update",
  "coordination",
  "heartbeat",
  "error",
] as const;
const DEFAULT_REQUEST_SECONDS = 60;
/** Longest a `request` waits for its reply, in seconds. */
export const MAX_REQUEST_SECONDS = 600;
const MAX_WAIT_SECONDS = 300;

/** A tool's answer: MCP's CallToolResult. */
export interface ToolResult {
  [key: string]: unknown;
  content: { type: "text"; text: string }[];
  isError?: boolean;
}

/** One agent's calls to the Broker: its client, and the options (credential, signal) of a call. */
export interface AgentCalls {
  agentId: string;
  /** Where the Broker is, for the error that none answers. */
  where: string;
  client: Client<typeof BrokerService>;
  /** Options for one call of `timeoutMs`: the agent's credential, the caller's abort signal. */
  options(timeoutMs: number, signal?: AbortSignal): CallOptions;
}

type Input = Record<string, unknown>;

interface Tool {
  description: string;
  inputSchema: { type: "object"; properties: Record<string, object>; required?: string[] };
  run(input: Input, c: AgentCalls, signal?: AbortSignal): Promise<ToolResult>;
}

const invalid = (message: string) => new ConnectError(message, Code.InvalidArgument);

function str(input: Input, key: string, required: boolean): string {
  const v = input[key];
  if (v === undefined || v === null || v === "") {
    if (required) throw invalid(`"${key}" is required`);
    return "";
  }
  if (typeof v !== "string") throw invalid(`"${key}" must be a string`);
  return v;
}

function num(input: Input, key: string, dflt: number, max: number): number {
  const v = input[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || v > max)
    throw invalid(`"${key}" must be a number from 0 to ${max}`);
  return v;
}

const text = (s: string): ToolResult => ({ content: [{ type: "text", text: s }] });
const failure = (s: string): ToolResult => ({
  content: [{ type: "text", text: s }],
  isError: true,
});
const typeName = (t: MessageType) => (t ? (MessageType[t] ?? "").toLowerCase() : "");

/** One delivered message as the model reads it. */
function formatMessage(m: Message, i: number): string {
  const type = typeName(m.type);
  const lines = [`--- message ${i + 1} ---`, `from: ${m.sender}`, `type: ${type}`];
  if (m.topic) lines.push(`topic: ${m.topic}`);
  if (m.correlationId) {
    lines.push(
      `correlation_id: ${m.correlationId}` +
        (type === "task_request" ? " (answer it with the reply tool and this id)" : ""),
    );
  }
  if (m.createTime) lines.push(`sent: ${String(toJson(TimestampSchema, m.createTime))}`);
  lines.push("", m.payload);
  return lines.join("\n");
}

/** The tools by name, as tools/list shows them and tools/call runs them. */
export const TOOLS: Readonly<Record<string, Tool>> = {
  send_message: {
    description:
      "Send a message to another agent (by agent id) or to every member of a topic you are a member of. " +
      "Delivery is durable: the receiver gets it even if it is busy or not running yet. " +
      "Use type task_request to ask for an answer later (it comes back to your inbox; see read_messages).",
    inputSchema: {
      type: "object",
      properties: {
        to: { type: "string", description: "The receiving agent's id (see list_agents)." },
        topic: {
          type: "string",
          description: "A topic you are a member of, instead of one agent (see list_agents).",
        },
        message: { type: "string", description: "The message text (e.g. plain text or JSON)." },
        type: { type: "string", enum: TYPES, description: "Default: coordination." },
        correlation_id: { type: "string", description: "Ties related messages together." },
      },
      required: ["message"],
    },
    async run(input, c, signal) {
      const to = str(input, "to", false);
      const topic = str(input, "topic", false);
      if (!to === !topic) throw invalid('give exactly one of "to" or "topic"');
      const type = str(input, "type", false) || "coordination";
      if (!(TYPES as readonly string[]).includes(type))
        throw invalid(`"type" must be one of ${TYPES.join(", ")}`);
      const res = await c.client.send(
        {
          destination: to ? { case: "receiver", value: to } : { case: "topic", value: topic },
          type: MessageType[type.toUpperCase() as keyof typeof MessageType],
          payload: str(input, "message", true),
          correlationId: str(input, "correlation_id", false),
        },
        c.options(30_000, signal),
      );
      const where = to ? to : `topic "${topic}" (${res.deliveredTo} subscriber(s) got it)`;
      const corr =
        type === "task_request"
          ? ` Its correlation id is ${res.correlationId}; the answer will arrive in your inbox (read_messages).`
          : "";
      return text(`Sent message ${res.messageId} to ${where}.${corr}`);
    },
  },
  request: {
    description:
      "Ask another agent something and wait for its reply (the other agent answers with its reply tool). " +
      "Returns the reply's text. If no reply comes within timeout_seconds, a later reply waits in your inbox.",
    inputSchema: {
      type: "object",
      properties: {
        to: { type: "string", description: "The agent to ask (see list_agents)." },
        message: { type: "string", description: "The request." },
        timeout_seconds: {
          type: "number",
          description: `How long to wait for the reply (default ${DEFAULT_REQUEST_SECONDS}, at most ${MAX_REQUEST_SECONDS}).`,
        },
        correlation_id: {
          type: "string",
          description:
            "Optional id for this request; asking again with it waits for the same reply.",
        },
      },
      required: ["to", "message"],
    },
    async run(input, c, signal) {
      const seconds = num(input, "timeout_seconds", DEFAULT_REQUEST_SECONDS, MAX_REQUEST_SECONDS);
      const timeoutMs = Math.max(1, Math.round(seconds * 1000));
      const res = await c.client.request(
        {
          receiver: str(input, "to", true),
          payload: str(input, "message", true),
          correlationId: str(input, "correlation_id", false),
          timeoutMs,
        },
        c.options(timeoutMs + 5000, signal),
      );
      const reply = res.reply;
      const kind = reply?.type === MessageType.ERROR ? "Error reply" : "Reply";
      return text(
        `${kind} from ${reply?.sender} (correlation id ${res.correlationId}):\n${reply?.payload ?? ""}`,
      );
    },
  },
  read_messages: {
    description:
      "Read the messages waiting in your inbox (they are then removed), including those sent to your topics. " +
      "Set wait_seconds to wait for one when none is there yet. Answer a task_request with reply.",
    inputSchema: {
      type: "object",
      properties: {
        wait_seconds: {
          type: "number",
          description: `Wait this long for a message if none is waiting (default 0, at most ${MAX_WAIT_SECONDS}).`,
        },
        max_messages: {
          type: "number",
          description: "At most this many (default 10, at most 100).",
        },
      },
    },
    async run(input, c, signal) {
      const waitMs = Math.round(num(input, "wait_seconds", 0, MAX_WAIT_SECONDS) * 1000);
      const max = Math.round(num(input, "max_messages", 10, 100));
      const { messages } = await c.client.receive(
        { maxMessages: max, waitMs },
        c.options(waitMs + 10_000, signal),
      );
      if (messages.length === 0) return text("No messages are waiting.");
      await c.client.ack({ messageIds: messages.map((m) => m.id) }, c.options(30_000, signal));
      return text(`${messages.length} message(s):\n\n${messages.map(formatMessage).join("\n\n")}`);
    },
  },
  reply: {
    description:
      "Answer a task_request you received, by its correlation id; the answer goes to whoever asked.",
    inputSchema: {
      type: "object",
      properties: {
        correlation_id: { type: "string", description: "The correlation_id of the request." },
        to: {
          type: "string",
          description:
            "Who asked (the request's 'from'); needed only when requests from several agents carry the same correlation_id.",
        },
        message: { type: "string", description: "The answer." },
        is_error: { type: "boolean", description: "Send it as an error (you could not do it)." },
      },
      required: ["correlation_id", "message"],
    },
    async run(input, c, signal) {
      const correlationId = str(input, "correlation_id", true);
      const res = await c.client.reply(
        {
          correlationId,
          requester: str(input, "to", false),
          payload: str(input, "message", true),
          isError: input["is_error"] === true,
        },
        c.options(30_000, signal),
      );
      return text(`Replied to ${res.receiver} (correlation id ${correlationId}).`);
    },
  },
  list_agents: {
    description: "List the agents you can message, whether they are connected, and their topics.",
    inputSchema: { type: "object", properties: {} },
    async run(_input, c, signal) {
      const { agents } = await c.client.listAgents({}, c.options(30_000, signal));
      const lines = agents.map((a) => {
        const parts = [a.connected ? "connected" : "not connected", `${a.waiting} waiting`];
        if (a.topics.length) parts.push(`topics: ${a.topics.join(", ")}`);
        return `- ${a.id}${a.id === c.agentId ? " (you)" : ""}: ${parts.join(", ")}`;
      });
      return text(lines.length ? `Agents:\n${lines.join("\n")}` : "No agents are known yet.");
    },
  },
};

/** What the server tells the model about itself (MCP `instructions`). */
export function instructions(agentId: string): string {
  return (
    `You are agent "${agentId}" in a Conductor fleet. These tools reach the other agents: ` +
    "send_message, request (ask and wait for the answer), read_messages (your inbox), reply (answer a task_request " +
    "by its correlation_id), list_agents."
  );
}

/**
 * Runs tool `name` (known: see TOOLS) as agent `c.agentId`. Every failure is a result with
 * isError, in words the model can act on: the Broker's refusal with its code, or, when no
 * Broker answers, that it is not running and how it is started.
 */
export async function runTool(
  tool: Tool,
  name: string,
  input: Input,
  c: AgentCalls,
  signal?: AbortSignal,
): Promise<ToolResult> {
  try {
    return await tool.run(input, c, signal);
  } catch (e) {
    if (!(e instanceof ConnectError)) return failure(`${name} failed: ${String(e)}`);
    const err = e;
    if (unreachable(err)) return failure(noBroker(name, c.where, err.rawMessage));
    return failure(`The Broker refused ${name}: ${codeToString(err.code)}: ${err.rawMessage}`);
  }
}

/**
 * Whether a call failed for want of a Broker: UNAVAILABLE, or its socket not there at all
 * (connect-node says INTERNAL for that, with the socket's error as the cause).
 */
function unreachable(e: ConnectError): boolean {
  const errno = (e.cause as NodeJS.ErrnoException | undefined)?.code;
  return e.code === Code.Unavailable || errno === "ENOENT" || errno === "ECONNREFUSED";
}

/** A tool's error when no Broker answers (none runs, or it stopped mid-run), in Conductor's words. */
function noBroker(tool: string, where: string, why: string): string {
  return (
    `${tool} failed: no Conductor Broker answers (cannot reach the Broker at ${where}: ${why}), so messages to and from other ` +
    "agents cannot be sent or read now. Retrying will not help until it runs again: the Broker is " +
    "started with `conductor broker` (or runs with every service under `conductor up`). Carry on " +
    "without messaging and say in your answer that the Broker was not running."
  );
}
