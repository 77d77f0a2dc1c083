import { create, type JsonObject } from "@bufbuild/protobuf";
import {
  AgentOutputSchema,
  TaskResultSchema,
  ToolCallSchema,
  UsageSchema,
  type AgentOutput,
  type TaskResult,
  type ToolCall,
} from "../../gen/conductor/v1/task_pb.js";
import { amount, int32, int64 } from "../shared/proto-numbers.ts";

/** One parsed line of `claude --output-format stream-json`. */
export interface ParsedLine {
  output: AgentOutput;
  /** Present on the final `result` line. */
  result?: TaskResult;
  /** Tool results on this line that are errors: the call's id and the error's text. */
  toolErrors?: { id: string; text: string }[];
}

interface ContentBlock {
  type?: string;
  text?: string;
  id?: string;
  name?: string;
  input?: unknown;
  content?: unknown;
  is_error?: unknown;
  tool_use_id?: unknown;
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
  const toolErrors: { id: string; text: string }[] = [];
  for (const b of blocks) {
    if (b.type === "tool_result" && b.is_error === true)
      toolErrors.push({ id: str(b.tool_use_id), text: blockText(b.content) });
    if (b.type === "text" && typeof b.text === "string") texts.push(b.text);
    if (b.type === "tool_use") {
      output.toolCalls.push(
        create(ToolCallSchema, {
          id: b.id ?? "",
          name: b.name ?? "",
          inputJson: inputJson(b.input),
        }),
      );
    }
  }
  if (type === "system" && obj["subtype"] === "permission_denied") {
    // {"type":"system","subtype":"permission_denied","tool_name","tool_use_id","message"}
    output.deniedToolCalls.push(
      create(ToolCallSchema, {
        id: str(obj["tool_use_id"]),
        name: str(obj["tool_name"]),
        denial: str(obj["message"]),
      }),
    );
  }
  if (type !== "result") {
    output.text = texts.join("");
    return toolErrors.length > 0 ? { output, toolErrors } : { output };
  }
  const text = typeof obj["result"] === "string" ? obj["result"] : "";
  output.text = text;
  const usage = (obj["usage"] ?? {}) as Record<string, unknown>;
  const isError =
    obj["is_error"] === true || (obj["subtype"] !== undefined && obj["subtype"] !== "success");
  const structured = obj["structured_output"];
  const result = create(TaskResultSchema, {
    text,
    // --json-schema's answer: the StructuredOutput tool's input, as the CLI accepted it.
    ...(typeof structured === "object" && structured !== null && !Array.isArray(structured)
      ? { structured: structured as JsonObject }
      : {}),
    isError,
    sessionId: str(obj["session_id"]),
    // Numbers as the fields can hold them: whatever the line says (an agent can write it).
    numTurns: int32(obj["num_turns"]),
    durationMs: int64(obj["duration_ms"]),
    costUsd: amount(obj["total_cost_usd"]),
    usage: create(UsageSchema, {
      inputTokens: int64(usage["input_tokens"]),
      outputTokens: int64(usage["output_tokens"]),
      cacheCreationInputTokens: int64(usage["cache_creation_input_tokens"]),
      cacheReadInputTokens: int64(usage["cache_read_input_tokens"]),
    }),
    error: isError ? text || `the CLI reported ${str(obj["subtype"]) || "an error"}` : "",
    // [{"tool_name","tool_use_id","tool_input"}]: the reasons came on earlier lines.
    deniedToolCalls: (Array.isArray(obj["permission_denials"])
      ? (obj["permission_denials"] as unknown[])
      : []
    )
      .filter((d): d is Record<string, unknown> => typeof d === "object" && d !== null)
      .map((d) =>
        create(ToolCallSchema, {
          id: str(d["tool_use_id"]),
          name: str(d["tool_name"]),
          inputJson: inputJson(d["tool_input"]),
        }),
      ),
  });
  return { output, result };
}

/** The tool the CLI's --json-schema gives the agent for its structured answer. */
export const STRUCTURED_OUTPUT_TOOL = "StructuredOutput";

/** How many of a run's latest tool calls a reader keeps, to fill in a later denial's input. */
const RECENT_CALLS = 64;
/** A result lists at most this many denied calls (the first ones), so it stays small. */
export const MAX_DENIED_CALLS = 100;
/** A denied call's input_json in a result is cut to this many characters, ending in "…". */
export const MAX_DENIED_INPUT_CHARS = 2000;

/**
 * Reads one run's stream-json lines in order and joins what the CLI says about a denied tool
 * call in three places: the call (its input), the `permission_denied` line (why) and the
 * result's `permission_denials` (the list). Every denied call then carries all three.
 */
export class StreamJsonReader {
  private readonly recent = new Map<string, ToolCall>();
  private readonly denied = new Map<string, ToolCall>();

  /** Why the CLI refused the agent's latest structured answer (its schema check), if it did. */
  refusal = "";

  /** Parses the next line; denied calls on it and on its result come complete. */
  read(line: string): ParsedLine {
    const parsed = parseStreamJsonLine(line);
    for (const call of parsed.output.toolCalls) {
      this.recent.set(call.id, call);
      if (this.recent.size > RECENT_CALLS) this.recent.delete(this.recent.keys().next().value!);
    }
    for (const d of parsed.output.deniedToolCalls) {
      d.inputJson ||= this.recent.get(d.id)?.inputJson ?? "";
      this.remember(d);
    }
    for (const e of parsed.toolErrors ?? [])
      if (this.recent.get(e.id)?.name === STRUCTURED_OUTPUT_TOOL) this.refusal = e.text;
    if (parsed.result) {
      for (const d of parsed.result.deniedToolCalls) this.remember(d);
      parsed.result.deniedToolCalls = this.deniedToolCalls();
    }
    return parsed;
  }

  /** The tool calls denied so far (the first MAX_DENIED_CALLS), in the order they were denied. */
  deniedToolCalls(): ToolCall[] {
    return [...this.denied.values()].map((d) => {
      const copy = copyCall(d);
      if (copy.inputJson.length > MAX_DENIED_INPUT_CHARS)
        copy.inputJson = `${copy.inputJson.slice(0, MAX_DENIED_INPUT_CHARS - 1)}…`;
      return copy;
    });
  }

  /** Adds a denied call, or completes the one with its id (the first MAX_DENIED_CALLS). */
  private remember(d: ToolCall): void {
    const known = this.denied.get(d.id);
    if (!known) {
      if (this.denied.size < MAX_DENIED_CALLS) this.denied.set(d.id, copyCall(d));
      return;
    }
    known.name ||= d.name;
    known.inputJson ||= d.inputJson;
    known.denial ||= d.denial;
  }
}

function copyCall(c: ToolCall): ToolCall {
  return create(ToolCallSchema, {
    id: c.id,
    name: c.name,
    inputJson: c.inputJson,
    denial: c.denial,
  });
}

/** A tool result's content as text: a string, or its text blocks joined. */
function blockText(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .map((c: unknown) => (typeof c === "object" && c !== null ? str((c as ContentBlock).text) : ""))
    .join("");
}

/**
 * A tool call's input as JSON. What the model sent may nest deeper than JSON.stringify can go
 * (it recurses: tens of thousands of levels throw RangeError), and is then said so instead.
 */
function inputJson(input: unknown): string {
  try {
    return JSON.stringify(input ?? {});
  } catch (e) {
    return JSON.stringify({ not_shown: `the input could not be written as JSON: ${String(e)}` });
  }
}

function str(v: unknown): string {
  return typeof v === "string" ? v : "";
}
