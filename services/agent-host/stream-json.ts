import { create } from "@bufbuild/protobuf";
import {
  AgentOutputSchema,
  TaskResultSchema,
  ToolCallSchema,
  UsageSchema,
  type AgentOutput,
  type TaskResult,
} from "../../gen/conductor/v1/task_pb.js";

/** One parsed line of `claude --output-format stream-json`. */
export interface ParsedLine {
  output: AgentOutput;
  /** Present on the final `result` line. */
  result?: TaskResult;
}

interface ContentBlock {
  type?: string;
  text?: string;
  id?: string;
  name?: string;
  input?: unknown;
  content?: unknown;
}

/** Turns one stream-json line into an AgentOutput (and a TaskResult for the `result` line). */
export function parseStreamJsonLine(line: string): ParsedLine {
  let obj: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(line);
    if (typeof parsed !== "object" || parsed === null) throw new Error("not an object");
    obj = parsed as Record<string, unknown>;
  } catch {
    return { output: create(AgentOutputSchema, { type: "text", text: line, rawJson: "" }) };
  }
  const type = typeof obj["type"] === "string" ? obj["type"] : "unknown";
  const output = create(AgentOutputSchema, { type, rawJson: line });
  const message = obj["message"] as { content?: unknown } | undefined;
  const blocks = Array.isArray(message?.content) ? (message.content as ContentBlock[]) : [];
  const texts: string[] = [];
  for (const b of blocks) {
    if (b.type === "text" && typeof b.text === "string") texts.push(b.text);
    if (b.type === "tool_use") {
      output.toolCalls.push(
        create(ToolCallSchema, {
          id: b.id ?? "",
          name: b.name ?? "",
          inputJson: JSON.stringify(b.input ?? {}),
        }),
      );
    }
  }
  if (type !== "result") {
    output.text = texts.join("");
    return { output };
  }
  const text = typeof obj["result"] === "string" ? obj["result"] : "";
  output.text = text;
  const usage = (obj["usage"] ?? {}) as Record<string, unknown>;
  const isError =
    obj["is_error"] === true || (obj["subtype"] !== undefined && obj["subtype"] !== "success");
  const result = create(TaskResultSchema, {
    text,
    isError,
    sessionId: str(obj["session_id"]),
    numTurns: num(obj["num_turns"]),
    durationMs: BigInt(Math.round(num(obj["duration_ms"]))),
    costUsd: num(obj["total_cost_usd"]),
    usage: create(UsageSchema, {
      inputTokens: BigInt(Math.trunc(num(usage["input_tokens"]))),
      outputTokens: BigInt(Math.trunc(num(usage["output_tokens"]))),
      cacheCreationInputTokens: BigInt(Math.trunc(num(usage["cache_creation_input_tokens"]))),
      cacheReadInputTokens: BigInt(Math.trunc(num(usage["cache_read_input_tokens"]))),
    }),
    error: isError ? text || `the CLI reported ${str(obj["subtype"]) || "an error"}` : "",
  });
  return { output, result };
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

function str(v: unknown): string {
  return typeof v === "string" ? v : "";
}
