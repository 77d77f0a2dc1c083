"use strict";
// Conductor's MCP server: gives a Claude Code agent the Broker as tools (send_message,
// request, read_messages, reply, list_agents). It speaks MCP (JSON-RPC 2.0, one message per
// line) on stdin/stdout and calls the Broker with the Connect protocol (unary JSON POSTs)
// over HTTP/2 on a Unix socket, authenticated by the agent's credential file.
//
// One self-contained file using only Node's built-in modules, loaded with
// process.getBuiltinModule (no import or require), so it runs from any folder with a bare
// `node` (>= 22.3), as CommonJS or as an ES module, with no node_modules and no package.json:
//
//   node mcp-server.js --socket <broker or relay socket> --credential-file <file> [--agent-id <id>]

const http2 = process.getBuiltinModule("node:http2");
const net = process.getBuiltinModule("node:net");
const fs = process.getBuiltinModule("node:fs");
const readline = process.getBuiltinModule("node:readline");
const { parseArgs } = process.getBuiltinModule("node:util");

const PROTOCOL_VERSIONS = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
const SERVICE = "/conductor.v1.BrokerService/";
const TYPES = [
  "task_request",
  "task_response",
  "status_update",
  "coordination",
  "heartbeat",
  "error",
];
const DEFAULT_REQUEST_SECONDS = 60;
const MAX_REQUEST_SECONDS = 600;
const MAX_WAIT_SECONDS = 300;

const { values: args } = parseArgs({
  options: {
    socket: { type: "string" },
    "credential-file": { type: "string" },
    "agent-id": { type: "string", default: "" },
  },
});
if (!args.socket || !args["credential-file"]) {
  process.stderr.write(
    "conductor-mcp: usage: node mcp-server.js --socket PATH --credential-file FILE [--agent-id ID]\n",
  );
  process.exit(2);
}
const socketPath = args.socket;
const credentialFile = args["credential-file"];
const self = args["agent-id"];

/** A refusal from the Broker: its Connect error code and message. */
class BrokerError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
    this.retry = false;
  }
}

let session;

/** One HTTP/2 session to the Broker, made again after it breaks (e.g. a Broker restart). */
function brokerSession() {
  if (!session || session.closed || session.destroyed) {
    session = http2.connect("http://localhost", {
      createConnection: () => net.connect(socketPath),
    });
    session.on("error", () => {}); // a failing call reports it; the next call reconnects
  }
  return session;
}

/** Calls one BrokerService method (unary, Connect protocol, JSON) and returns its answer. */
async function call(method, body, timeoutMs) {
  try {
    return await attempt(method, body, timeoutMs);
  } catch (e) {
    // A session the Broker closed (it restarted) refuses the stream unprocessed: try once more.
    if (!(e instanceof BrokerError) || !e.retry) throw e;
    session = undefined;
    return attempt(method, body, timeoutMs);
  }
}

/** Errors that mean the request never reached a handler, so sending it again is safe. */
const UNPROCESSED = /REFUSED_STREAM|GOAWAY|ERR_HTTP2_INVALID_SESSION|ERR_HTTP2_SESSION_ERROR/;

function attempt(method, body, timeoutMs) {
  return new Promise((resolve, reject) => {
    let credential;
    try {
      credential = fs.readFileSync(credentialFile, "utf8").trim();
    } catch (e) {
      reject(new BrokerError("unauthenticated", `cannot read the credential file: ${e.message}`));
      return;
    }
    const unreachable = (e, retry) => {
      const err = new BrokerError(
        "unavailable",
        `cannot reach the Broker at ${socketPath}: ${e.message}`,
      );
      err.retry = retry;
      return err;
    };
    let req;
    try {
      req = brokerSession().request({
        ":method": "POST",
        ":path": SERVICE + method,
        "content-type": "application/json",
        "connect-protocol-version": "1",
        "connect-timeout-ms": String(timeoutMs),
        authorization: `Bearer ${credential}`,
      });
    } catch (e) {
      session = undefined;
      reject(unreachable(e, true));
      return;
    }
    let status = 0;
    let text = "";
    req.setEncoding("utf8");
    req.on("response", (headers) => (status = Number(headers[":status"])));
    req.on("data", (chunk) => (text += chunk));
    req.on("error", (e) => {
      reject(unreachable(e, status === 0 && UNPROCESSED.test(`${e.code} ${e.message}`)));
    });
    // A connection closed before any answer (e.g. the relay found no Broker behind it).
    const noAnswer = () =>
      reject(unreachable(new Error("the connection closed unanswered"), false));
    req.on("close", noAnswer);
    req.on("end", () => {
      if (status === 0) return noAnswer();
      let json;
      try {
        json = text ? JSON.parse(text) : {};
      } catch {
        json = { code: "unknown", message: text };
      }
      if (status === 200) resolve(json);
      else reject(new BrokerError(json.code || `http_${status}`, json.message || `HTTP ${status}`));
    });
    req.end(JSON.stringify(body));
  });
}

const typeName = (t) =>
  String(t || "")
    .replace(/^MESSAGE_TYPE_/, "")
    .toLowerCase();
const typeEnum = (name) => `MESSAGE_TYPE_${String(name).toUpperCase()}`;

/** One delivered message as the model reads it. */
function formatMessage(m, i) {
  const type = typeName(m.type);
  const lines = [`--- message ${i + 1} ---`, `from: ${m.sender}`, `type: ${type}`];
  if (m.topic) lines.push(`topic: ${m.topic}`);
  if (m.correlationId) {
    lines.push(
      `correlation_id: ${m.correlationId}` +
        (type === "task_request" ? " (answer it with the reply tool and this id)" : ""),
    );
  }
  if (m.createTime) lines.push(`sent: ${m.createTime}`);
  lines.push("", m.payload || "");
  return lines.join("\n");
}

/** A tool's error when no Broker answers (none runs, or it stopped mid-run), in Conductor's words. */
function noBroker(tool, e) {
  return (
    `${tool} failed: no Conductor Broker answers (${e.message}), so messages to and from other ` +
    "agents cannot be sent or read now. Retrying will not help until it runs again: the Broker is " +
    "started with `conductor broker` (or runs with every service under `conductor up`). Carry on " +
    "without messaging and say in your answer that the Broker was not running."
  );
}

function text(s) {
  return { content: [{ type: "text", text: s }] };
}

function failure(s) {
  return { content: [{ type: "text", text: s }], isError: true };
}

function str(input, key, required) {
  const v = input[key];
  if (v === undefined || v === null || v === "") {
    if (required) throw new BrokerError("invalid_argument", `"${key}" is required`);
    return "";
  }
  if (typeof v !== "string") throw new BrokerError("invalid_argument", `"${key}" must be a string`);
  return v;
}

function num(input, key, dflt, max) {
  const v = input[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || v > max) {
    throw new BrokerError("invalid_argument", `"${key}" must be a number from 0 to ${max}`);
  }
  return v;
}

const TOOLS = {
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
    async run(input) {
      const to = str(input, "to", false);
      const topic = str(input, "topic", false);
      if (!to === !topic)
        throw new BrokerError("invalid_argument", 'give exactly one of "to" or "topic"');
      const type = str(input, "type", false) || "coordination";
      if (!TYPES.includes(type))
        throw new BrokerError("invalid_argument", `"type" must be one of ${TYPES.join(", ")}`);
      const res = await call(
        "Send",
        {
          ...(to ? { receiver: to } : { topic }),
          type: typeEnum(type),
          payload: str(input, "message", true),
          correlationId: str(input, "correlation_id", false),
        },
        30_000,
      );
      const where = to ? to : `topic "${topic}" (${res.deliveredTo || 0} subscriber(s) got it)`;
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
    async run(input) {
      const seconds = num(input, "timeout_seconds", DEFAULT_REQUEST_SECONDS, MAX_REQUEST_SECONDS);
      const timeoutMs = Math.max(1, Math.round(seconds * 1000));
      const res = await call(
        "Request",
        {
          receiver: str(input, "to", true),
          payload: str(input, "message", true),
          correlationId: str(input, "correlation_id", false),
          timeoutMs,
        },
        timeoutMs + 5000,
      );
      const reply = res.reply || {};
      const kind = typeName(reply.type) === "error" ? "Error reply" : "Reply";
      return text(
        `${kind} from ${reply.sender} (correlation id ${res.correlationId}):\n${reply.payload || ""}`,
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
    async run(input) {
      const waitMs = Math.round(num(input, "wait_seconds", 0, MAX_WAIT_SECONDS) * 1000);
      const max = Math.round(num(input, "max_messages", 10, 100));
      const res = await call("Receive", { maxMessages: max, waitMs }, waitMs + 10_000);
      const messages = res.messages || [];
      if (messages.length === 0) return text("No messages are waiting.");
      await call("Ack", { messageIds: messages.map((m) => m.id) }, 30_000);
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
    async run(input) {
      const correlationId = str(input, "correlation_id", true);
      const res = await call(
        "Reply",
        {
          correlationId,
          requester: str(input, "to", false),
          payload: str(input, "message", true),
          isError: input.is_error === true,
        },
        30_000,
      );
      return text(`Replied to ${res.receiver} (correlation id ${correlationId}).`);
    },
  },
  list_agents: {
    description: "List the agents you can message, whether they are connected, and their topics.",
    inputSchema: { type: "object", properties: {} },
    async run() {
      const res = await call("ListAgents", {}, 30_000);
      const lines = (res.agents || []).map((a) => {
        const parts = [a.connected ? "connected" : "not connected", `${a.waiting || 0} waiting`];
        if (a.topics && a.topics.length) parts.push(`topics: ${a.topics.join(", ")}`);
        return `- ${a.id}${a.id === self ? " (you)" : ""}: ${parts.join(", ")}`;
      });
      return text(lines.length ? `Agents:\n${lines.join("\n")}` : "No agents are known yet.");
    },
  },
};

const INSTRUCTIONS =
  `You are ${self ? `agent "${self}"` : "an agent"} in a Conductor fleet. These tools reach the other agents: ` +
  "send_message, request (ask and wait for the answer), read_messages (your inbox), reply (answer a task_request " +
  "by its correlation_id), list_agents.";

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

async function handle(msg) {
  const method = msg.method;
  const params = msg.params || {};
  switch (method) {
    case "initialize": {
      const asked = params.protocolVersion;
      return {
        protocolVersion: PROTOCOL_VERSIONS.includes(asked) ? asked : PROTOCOL_VERSIONS[0],
        capabilities: { tools: { listChanged: false } },
        serverInfo: { name: "conductor-broker", version: "1.0.0" },
        instructions: INSTRUCTIONS,
      };
    }
    case "ping":
      return {};
    case "tools/list":
      return {
        tools: Object.entries(TOOLS).map(([name, t]) => ({
          name,
          description: t.description,
          inputSchema: t.inputSchema,
        })),
      };
    case "tools/call": {
      const tool = Object.hasOwn(TOOLS, params.name) ? TOOLS[params.name] : undefined;
      if (!tool) throw Object.assign(new Error(`unknown tool: ${params.name}`), { rpc: -32602 });
      try {
        return await tool.run(params.arguments || {});
      } catch (e) {
        if (e instanceof BrokerError && e.code === "unavailable")
          return failure(noBroker(params.name, e));
        if (e instanceof BrokerError)
          return failure(`The Broker refused ${params.name}: ${e.code}: ${e.message}`);
        return failure(`${params.name} failed: ${e && e.message ? e.message : String(e)}`);
      }
    }
    default:
      throw Object.assign(new Error(`method not found: ${method}`), { rpc: -32601 });
  }
}

let inFlight = 0;
let inputClosed = false;
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    send({ jsonrpc: "2.0", id: null, error: { code: -32700, message: "parse error" } });
    return;
  }
  if (typeof msg.method !== "string" || msg.id === undefined || msg.id === null) return; // notification or response
  inFlight++;
  handle(msg)
    .then(
      (result) => send({ jsonrpc: "2.0", id: msg.id, result }),
      (e) =>
        send({ jsonrpc: "2.0", id: msg.id, error: { code: e.rpc || -32603, message: e.message } }),
    )
    .finally(() => {
      inFlight--;
      if (inputClosed && inFlight === 0) shutDown();
    });
});
// Once the client closes stdin, answer what is in flight, then exit.
lines.on("close", () => {
  inputClosed = true;
  if (inFlight === 0) shutDown();
});

function shutDown() {
  if (session) session.destroy();
  process.exitCode = 0;
  process.stdout.write("", () => process.exit());
}
