/**
 * What one model call costs, read from the Messages API's answer as it passes the model proxy,
 * and charged at the most it could have cost when its answer never tells it.
 *
 * The usage fields are the API's (https://docs.anthropic.com/en/api/messages-streaming):
 * message_start carries the input side, each message_delta the totals so far (cumulative:
 * "The token counts shown in the usage field of the message_delta event are cumulative"), a
 * JSON answer its whole usage. So a call's count is, field by field, the largest told; what it
 * adds to the run is the difference from what it told before, charged as it arrives.
 */

/** Token counts of one call (the API's usage fields). */
export interface CallTokens {
  /** input_tokens: input neither read from nor written to the prompt cache. */
  input: number;
  output: number;
  /** cache_creation_input_tokens: all input written to the prompt cache... */
  cacheWrite: number;
  /** ...of which written for an hour (cache_creation.ephemeral_1h_input_tokens). */
  cacheWrite1h: number;
  /** cache_read_input_tokens. */
  cacheRead: number;
  /** server_tool_use.web_search_requests. */
  webSearches: number;
}

export const NO_TOKENS: Readonly<CallTokens> = {
  input: 0,
  output: 0,
  cacheWrite: 0,
  cacheWrite1h: 0,
  cacheRead: 0,
  webSearches: 0,
};

/**
 * Output tokens a call is charged when its answer never told its usage and its request named
 * no max_tokens up to this; the most any model's answer holds (Claude 3.7 Sonnet's 128K with
 * its extended-output beta; https://docs.anthropic.com/en/docs/about-claude/models/overview).
 */
export const MAX_OUTPUT_TOKENS = 128_000;
/** Longest SSE line, or JSON answer, read for usage (a usage event is a few hundred bytes). */
export const MAX_METERED_BYTES = 4 * 2 ** 20;

const MAX_TOKENS_KEY = Buffer.from('"max_tokens"');
/** Bytes kept from one request chunk to the next, so that a key split between them is found. */
const KEY_TAIL = 64;

/**
 * Meters one call. `add` receives what each step adds to the call's count (never negative),
 * and the answer's model (""; priced then as the dearest, see priceOf).
 *
 * A call's answer is charged as told when it ends whole (a JSON body, or an SSE stream whose
 * message_delta or error event came) or with an error status (the API bills no error). An
 * answer that ends without — cut, broken, unreadable (an encoding the proxy did not ask for, a
 * usage line over {@link MAX_METERED_BYTES}), or the call ended before its answer came, its
 * request sent — is charged the most it could have cost: its request's max_tokens of output
 * (the largest value under that key anywhere in the body, at most {@link MAX_OUTPUT_TOKENS}),
 * and, unless message_start told it, one input token per byte of its request. So no way of
 * ending a call spends what a budget does not count.
 */
export class CallMeter {
  model = "";
  private told: CallTokens = { ...NO_TOKENS };
  private inputTold = false;
  private whole = false;
  private settled = false;
  private status = 0;
  private sent = false;
  private requestBytes = 0;
  private maxTokens = 0;
  private keyTail = Buffer.alloc(0);
  private sse = false;
  private readable = true;
  private text = "";
  private skipping = false;

  private readonly add: (more: CallTokens, model: string) => void;

  constructor(add: (more: CallTokens, model: string) => void) {
    this.add = add;
  }

  /** A chunk of the request body, on its way upstream. */
  request(chunk: Buffer): void {
    this.requestBytes += chunk.length;
    const hay = this.keyTail.length ? Buffer.concat([this.keyTail, chunk]) : chunk;
    for (
      let at = hay.indexOf(MAX_TOKENS_KEY);
      at !== -1;
      at = hay.indexOf(MAX_TOKENS_KEY, at + 1)
    ) {
      const m = /^"max_tokens"\s*:\s*(\d{1,12})/.exec(hay.subarray(at, at + 48).toString("latin1"));
      if (m) this.maxTokens = Math.max(this.maxTokens, Number(m[1]));
    }
    this.keyTail = Buffer.from(hay.subarray(Math.max(0, hay.length - KEY_TAIL)));
  }

  /** The request body is all upstream: from now on the model may be at work on it. */
  requestSent(): void {
    this.sent = true;
  }

  /** The answer's status and headers: how its body is read. */
  answer(status: number, headers: { "content-type"?: string; "content-encoding"?: string }): void {
    this.status = status;
    this.sse = /^\s*text\/event-stream/i.test(headers["content-type"] ?? "");
    const encoding = (headers["content-encoding"] ?? "identity").trim().toLowerCase();
    this.readable = encoding === "identity" || encoding === "";
  }

  /** A chunk of the answer's body. */
  body(chunk: Buffer): void {
    if (this.settled || !this.readable || !this.billable()) return;
    const text = chunk.toString("utf8");
    if (!this.sse) {
      this.text += text;
      if (this.text.length > MAX_METERED_BYTES) this.readable = false;
      return;
    }
    let start = 0;
    for (let nl = nextBreak(text, 0); nl !== -1; nl = nextBreak(text, start)) {
      if (!this.skipping) this.line(this.text + text.slice(start, nl));
      this.text = "";
      this.skipping = false;
      start = nl + 1;
    }
    if (this.skipping) return;
    this.text += text.slice(start);
    if (this.text.length > MAX_METERED_BYTES) {
      // A huge line (no usage line is): skip to its end instead of holding it.
      this.text = "";
      this.skipping = true;
    }
  }

  /**
   * The answer ended whole as HTTP goes: charged as told, or at the most (see the class) when
   * it did not tell. Gives false then.
   */
  end(): boolean {
    if (this.settled) return true;
    if (this.readable && !this.sse && this.billable()) this.json(this.text);
    else if (this.readable && this.sse) this.line(this.text);
    return this.settle();
  }

  /** The call ended before its answer did (cut, or broken): see end(). */
  cut(): boolean {
    return this.settle();
  }

  /** Whether the API bills this call: it answered 2xx, or may still be at work on it. */
  private billable(): boolean {
    return this.status === 0 ? this.sent : this.status >= 200 && this.status < 300;
  }

  private settle(): boolean {
    if (this.settled) return true;
    this.settled = true;
    this.text = "";
    if (this.whole || !this.billable()) return true;
    const most = Math.min(this.maxTokens || MAX_OUTPUT_TOKENS, MAX_OUTPUT_TOKENS);
    this.raise({
      ...this.told,
      input: this.inputTold ? this.told.input : Math.max(this.told.input, this.requestBytes),
      output: Math.max(this.told.output, most),
    });
    return false;
  }

  private line(line: string): void {
    if (line.startsWith("event:") && line.slice(6).trim() === "error") {
      this.whole = true; // the API's error mid-stream: the answer ends here, as told
      return;
    }
    if (!line.startsWith("data:")) return;
    const json = line.slice(5).trim();
    if (json.startsWith("{") && json.includes('"usage"')) this.json(json);
  }

  private json(json: string): void {
    let obj: Answer;
    try {
      obj = JSON.parse(json) as Answer;
    } catch {
      return; // not a whole JSON answer or line: not told
    }
    if (typeof obj !== "object" || obj === null) return;
    const start = obj.type === "message_start";
    const model = start ? obj.message?.model : obj.model;
    if (typeof model === "string" && model) this.model = model;
    const u = start ? obj.message?.usage : obj.usage;
    if (typeof u !== "object" || u === null) return;
    // A JSON answer tells its usage whole; a stream, at its message_delta.
    if (this.sse ? obj.type === "message_delta" : !start) this.whole = true;
    const e1h = count(u.cache_creation?.ephemeral_1h_input_tokens);
    const e5m = count(u.cache_creation?.ephemeral_5m_input_tokens);
    if (u.input_tokens !== undefined && u.input_tokens !== null) this.inputTold = true;
    this.raise({
      input: count(u.input_tokens),
      output: count(u.output_tokens),
      cacheWrite: Math.max(count(u.cache_creation_input_tokens), e1h + e5m),
      cacheWrite1h: e1h,
      cacheRead: count(u.cache_read_input_tokens),
      webSearches: count(u.server_tool_use?.web_search_requests),
    });
  }

  /** Takes each field's largest value so far; passes on what that adds. */
  private raise(to: CallTokens): void {
    const more = { ...NO_TOKENS };
    let any = false;
    for (const k of Object.keys(NO_TOKENS) as (keyof CallTokens)[]) {
      const v = Math.max(this.told[k], to[k]);
      more[k] = v - this.told[k];
      this.told[k] = v;
      any ||= more[k] > 0;
    }
    if (any) this.add(more, this.model);
  }
}

/** The next line break (CR, LF; CRLF reads as two, the second ending an empty line). */
function nextBreak(text: string, from: number): number {
  const lf = text.indexOf("\n", from);
  const cr = text.indexOf("\r", from);
  return cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf);
}

interface Usage {
  input_tokens?: unknown;
  output_tokens?: unknown;
  cache_creation_input_tokens?: unknown;
  cache_read_input_tokens?: unknown;
  cache_creation?: { ephemeral_5m_input_tokens?: unknown; ephemeral_1h_input_tokens?: unknown };
  server_tool_use?: { web_search_requests?: unknown };
}

interface Answer {
  type?: string;
  model?: unknown;
  usage?: Usage | null;
  message?: { model?: unknown; usage?: Usage | null };
}

/** A token count as the API gives it; anything else (absent, negative, not a number) is 0. */
function count(n: unknown): number {
  return typeof n === "number" && Number.isFinite(n) && n > 0 ? Math.trunc(n) : 0;
}
