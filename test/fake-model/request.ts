// Reading a Messages API request body the way the fake needs: which kind of call it is,
// where the script is, which step is due and which working directory the CLI runs in.
// Pure functions; see docs/notes/fake-model.md for why the rules are what they are.
import path from "node:path";
import { extractScript, type Step } from "./script.ts";

/**
 * How the fake sees a `/v1/messages` request. `main` and `subagent` (an Agent-tool child,
 * marked `cc_is_subagent=true` in the system prompt) are agent-loop turns answered from the
 * script in their own first user message; `side` calls (no tools) always get short text.
 */
export type RequestKind = "main" | "subagent" | "side";

/** The parts of a decoded `/v1/messages` body the fake looks at. */
export interface MessagesBody {
  model?: unknown;
  stream?: unknown;
  tools?: unknown;
  system?: unknown;
  messages?: unknown;
}

interface Block {
  type?: unknown;
  text?: unknown;
  content?: unknown;
}

interface Message {
  role?: unknown;
  content?: unknown;
}

/** Narrows an unknown JSON body to the fields used here (anything else is ignored). */
export function asMessagesBody(body: unknown): MessagesBody {
  return typeof body === "object" && body !== null ? body : {};
}

function messagesOf(body: MessagesBody): Message[] {
  return Array.isArray(body.messages) ? (body.messages as Message[]) : [];
}

function blocksOf(content: unknown): Block[] {
  if (typeof content === "string") return [{ type: "text", text: content }];
  return Array.isArray(content) ? (content as Block[]) : [];
}

/** Texts of the first user message: the system-reminder blocks plus the task prompt. */
export function firstUserTexts(body: MessagesBody): string[] {
  const first = messagesOf(body).find((m) => m.role === "user");
  if (first === undefined) return [];
  return blocksOf(first.content).flatMap((b) =>
    b.type === "text" && typeof b.text === "string" ? [b.text] : [],
  );
}

/**
 * Agent-loop requests are the ones that offer tools: the CLI's loop always sends its tool
 * list. Calls without tools (titles, summaries, classifiers) are side calls.
 */
export function classify(body: MessagesBody): RequestKind {
  if (!Array.isArray(body.tools) || body.tools.length === 0) return "side";
  const system = JSON.stringify(body.system ?? "");
  return system.includes("cc_is_subagent=true") ? "subagent" : "main";
}

/**
 * The script in the first user message: its last plain-text block holding one, skipping
 * `<system-reminder>` blocks (CLAUDE.md and environment text land there), never tool results.
 */
export function scriptOf(body: MessagesBody): Step[] | undefined {
  const texts = firstUserTexts(body).filter((t) => !t.trimStart().startsWith("<system-reminder>"));
  for (const text of texts.reverse()) {
    const steps = extractScript(text);
    if (steps !== undefined) return steps;
  }
  return undefined;
}

/** Index of the step to answer: how many tool turns already happened in this conversation. */
export function countToolResults(body: MessagesBody): number {
  let n = 0;
  for (const m of messagesOf(body)) {
    for (const b of blocksOf(m.content)) if (b.type === "tool_result") n++;
  }
  return n;
}

/**
 * How many prompts the user gave after the first: a resumed session (`--resume`) sends its
 * whole history and then the new prompt, and each such prompt moves the script on one step,
 * like a tool turn does. A user message counts when it holds text that is not a
 * `<system-reminder>` and no tool result.
 */
export function countFollowUps(body: MessagesBody): number {
  const users = messagesOf(body).filter((m) => m.role === "user");
  return users.slice(1).filter((m) => {
    const blocks = blocksOf(m.content);
    if (blocks.some((b) => b.type === "tool_result")) return false;
    return blocks.some(
      (b) =>
        b.type === "text" &&
        typeof b.text === "string" &&
        b.text.trim() !== "" &&
        !b.text.trimStart().startsWith("<system-reminder>"),
    );
  }).length;
}

/**
 * The text of the conversation's latest tool result (its text blocks joined), or "" when
 * there is none yet. Lets a step use what an earlier tool returned (see fillToolResult).
 */
export function lastToolResult(body: MessagesBody): string {
  let last: Block | undefined;
  for (const m of messagesOf(body)) {
    for (const b of blocksOf(m.content)) if (b.type === "tool_result") last = b;
  }
  if (last === undefined) return "";
  return blocksOf(last.content)
    .flatMap((b) => (typeof b.text === "string" ? [b.text] : []))
    .join("\n");
}

const CWD_RE = /Primary working directory: (.+)/g;

/**
 * The CLI's working directory as its environment block names it. In CLI 2.1.332 that block
 * is a `role: "system"` entry inside `messages`, older CLIs put it in `system`: search both.
 */
export function workingDirectory(body: MessagesBody): string | undefined {
  const texts: string[] = [];
  for (const b of blocksOf(body.system)) if (typeof b.text === "string") texts.push(b.text);
  for (const m of messagesOf(body)) {
    for (const b of blocksOf(m.content)) if (typeof b.text === "string") texts.push(b.text);
  }
  // The last one is where the CLI runs now: a session resumed in another folder is told
  // "Primary working directory: /new (was /old)" after its first turn's.
  const found = texts.flatMap((t) => [...t.matchAll(CWD_RE)].map((m) => m[1]!));
  return found
    .at(-1)
    ?.replace(/ \(was .*\)$/, "")
    .trim();
}

/** Resolves a scripted Write path: absolute paths stay, relative ones join the CLI's cwd. */
export function resolveScriptPath(cwd: string | undefined, p: string): string {
  if (path.isAbsolute(p)) return p;
  return path.resolve(cwd ?? process.cwd(), p);
}
