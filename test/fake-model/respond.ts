// Builds answers in the Anthropic Messages API shapes: a whole message (non-streaming),
// the SSE event sequence (streaming) and the JSON error body.
import { randomBytes } from "node:crypto";
import type { ServerResponse } from "node:http";
import { resolveScriptPath } from "./request.ts";
import type { Action, ErrorSpec, Usage } from "./script.ts";

/** A content block the fake can answer with. */
export type ContentBlock =
  | { type: "text"; text: string }
  | { type: "tool_use"; id: string; name: string; input: Record<string, unknown> };

/** One assistant turn, independent of how it is sent (JSON or SSE). */
export interface Reply {
  content: ContentBlock[];
  stopReason: "end_turn" | "tool_use";
  usage: Usage;
}

/** Text used when there is no script, the script ran out, or the call is a side call. */
export const DEFAULT_MAIN_TEXT = "ok";
export const EXHAUSTED_TEXT = "done";

/** Random ids like the real API's (`msg_…`, `toolu_…`) so the CLI accepts them. */
export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(12).toString("hex")}`;
}

/** Turns a script action into an assistant turn; tool paths resolve against the CLI's cwd. */
export function replyFor(action: Action | undefined, cwd: string | undefined, usage: Usage): Reply {
  const tool = (name: string, input: Record<string, unknown>): Reply => ({
    content: [{ type: "tool_use", id: newId("toolu"), name, input }],
    stopReason: "tool_use",
    usage,
  });
  switch (action?.kind) {
    case undefined:
      return textReply(EXHAUSTED_TEXT, usage);
    case "text":
      return textReply(action.text, usage);
    case "write":
      return tool("Write", {
        file_path: resolveScriptPath(cwd, action.path),
        content: action.content,
      });
    case "bash":
      return tool("Bash", { command: action.command, description: "Run scripted command" });
    case "tool":
      return tool(action.name, action.input);
  }
}

/** A final-text turn (stop_reason end_turn). */
export function textReply(text: string, usage: Usage): Reply {
  return { content: [{ type: "text", text }], stopReason: "end_turn", usage };
}

function fullUsage(u: Usage) {
  return {
    input_tokens: u.input_tokens,
    cache_creation_input_tokens: u.cache_creation_input_tokens ?? 0,
    cache_read_input_tokens: u.cache_read_input_tokens ?? 0,
    output_tokens: u.output_tokens,
  };
}

/** The non-streaming answer: one `message` object. */
export function messageJson(reply: Reply, model: string, id = newId("msg")) {
  return {
    id,
    type: "message",
    role: "assistant",
    model,
    content: reply.content,
    stop_reason: reply.stopReason,
    stop_sequence: null,
    usage: fullUsage(reply.usage),
  };
}

function chunks(s: string, size = 64): string[] {
  const out: string[] = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out.length > 0 ? out : [""];
}

function sse(type: string, data: Record<string, unknown>): string {
  return `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
}

/**
 * The streaming answer as SSE frames: message_start, ping, per block content_block_start /
 * deltas (text_delta or input_json_delta) / content_block_stop, message_delta, message_stop.
 * Output tokens go in message_delta (the CLI takes that value as the turn's final count).
 */
export function sseFrames(reply: Reply, model: string, id = newId("msg")): string[] {
  const start = { ...fullUsage(reply.usage), output_tokens: 1 };
  const frames = [
    sse("message_start", {
      message: { ...messageJson(reply, model, id), content: [], stop_reason: null, usage: start },
    }),
    sse("ping", {}),
  ];
  reply.content.forEach((block, index) => {
    if (block.type === "text") {
      frames.push(sse("content_block_start", { index, content_block: { type: "text", text: "" } }));
      for (const text of chunks(block.text)) {
        frames.push(sse("content_block_delta", { index, delta: { type: "text_delta", text } }));
      }
    } else {
      const content_block = { ...block, input: {} };
      frames.push(sse("content_block_start", { index, content_block }));
      for (const partial_json of chunks(JSON.stringify(block.input))) {
        const delta = { type: "input_json_delta", partial_json };
        frames.push(sse("content_block_delta", { index, delta }));
      }
    }
    frames.push(sse("content_block_stop", { index }));
  });
  frames.push(
    sse("message_delta", {
      delta: { stop_reason: reply.stopReason, stop_sequence: null },
      usage: { output_tokens: reply.usage.output_tokens },
    }),
    sse("message_stop", {}),
  );
  return frames;
}

/** Anthropic's error body: `{"type":"error","error":{"type":…,"message":…}}`. */
export function errorBody(err: Pick<ErrorSpec, "type" | "message">) {
  return { type: "error", error: { type: err.type, message: err.message } };
}

/** Writes a JSON answer (or an empty one for HEAD); false if the socket is already gone. */
export function writeJson(res: ServerResponse, status: number, json: unknown): boolean {
  if (res.destroyed) return false;
  res.writeHead(status, { "content-type": "application/json", "request-id": newId("req") });
  res.end(json === undefined ? undefined : JSON.stringify(json));
  return true;
}

/** Writes an assistant turn as SSE (`stream: true`) or as one JSON message. */
export function writeReply(res: ServerResponse, reply: Reply, model: string, stream: boolean) {
  if (!stream) return writeJson(res, 200, messageJson(reply, model));
  if (res.destroyed) return false;
  res.writeHead(200, {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "request-id": newId("req"),
  });
  for (const frame of sseFrames(reply, model)) res.write(frame);
  res.end();
  return true;
}
