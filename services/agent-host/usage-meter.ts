import { costOf, type ModelPrice } from "../shared/prices.ts";

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

/**
 * Meters one call: `add` receives what each step adds to the call's tokens and to its price
 * in US dollars (never less), priced on the call's totals by `prices` (see costOf: long
 * context and fast mode change the price of every token of a call), by the answer's model (""
 * before it is told: priced then as the dearest, see priceOf).
 *
 * A call's answer is charged as told when it ends whole (a JSON body with its usage, an SSE
 * stream at its message_stop or the API's error event) or with an error status (the API bills
 * no error). An answer that ends without — cut, broken, unreadable (an encoding the proxy did
 * not ask for, a usage line over {@link MAX_METERED_BYTES}), or the call ended before its
 * answer came, its request sent — is charged the most it could have cost:
 * - its request's max_tokens of output (as a JSON parser reads it, see TopLevelValues; at most
 *   {@link MAX_OUTPUT_TOKENS}, and that when it is not one plain number);
 * - unless message_start told its input, one input token per byte of its request; and one more
 *   per byte of the server tools' results streamed (web search, fetch), whose tokens the API
 *   adds to the input only at the end; each web search begun, as one;
 * - at fast mode's price when its request asked for any speed but "standard", and at a
 *   region's when it asked for any inference_geo but "global".
 * So no way of ending a call spends what a budget does not count.
 */
export class CallMeter {
  model = "";
  private told: CallTokens = { ...NO_TOKENS };
  /** Dollars charged so far. */
  private usd = 0;
  /** Fast mode's or a region's price applies (told by the answer, or asked by the request). */
  private fastTold = false;
  private regionalTold = false;
  private inputTold = false;
  private usageTold = false;
  private whole = false;
  private settled = false;
  private status = 0;
  private sent = false;
  private requestBytes = 0;
  private readonly asked = new TopLevelValues(["max_tokens", "speed", "inference_geo"]);
  /** Server tool results streamed (bytes), and web searches begun, in an answer not yet told. */
  private resultBytes = 0;
  private searches = 0;
  private sse = false;
  private readable = true;
  private text = "";
  private skipping = false;
  private readonly prices: Readonly<Record<string, ModelPrice>>;
  private readonly add: (more: CallTokens, usd: number, model: string) => void;

  constructor(
    prices: Readonly<Record<string, ModelPrice>>,
    add: (more: CallTokens, usd: number, model: string) => void,
  ) {
    this.prices = prices;
    this.add = add;
  }

  /** A chunk of the request body, on its way upstream. */
  request(chunk: Buffer): void {
    this.requestBytes += chunk.length;
    this.asked.feed(chunk.toString("latin1"));
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
      if (this.skipping) this.resultBytes += nl - start;
      else this.line(this.text + text.slice(start, nl));
      this.text = "";
      this.skipping = false;
      start = nl + 1;
    }
    if (this.skipping) {
      this.resultBytes += text.length - start;
      return;
    }
    this.text += text.slice(start);
    if (this.text.length > MAX_METERED_BYTES) {
      // A huge line (no usage line is): skipped to its end, counted as a tool's result.
      this.resultBytes += this.text.length;
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
    const asked = this.asked.values("max_tokens");
    const plain = asked && !asked.other && !asked.more && asked.strings.size === 0;
    const most = plain && asked.max !== undefined ? Math.max(0, Math.ceil(asked.max)) : Infinity;
    this.fastTold ||= asksBut(this.asked.values("speed"), "standard");
    this.regionalTold ||= asksBut(this.asked.values("inference_geo"), "global");
    const input = this.inputTold ? this.told.input : Math.max(this.told.input, this.requestBytes);
    this.raise({
      ...this.told,
      input: input + this.resultBytes,
      output: Math.max(this.told.output, Math.min(most, MAX_OUTPUT_TOKENS)),
      webSearches: Math.max(this.told.webSearches, this.searches),
    });
    return false;
  }

  private line(line: string): void {
    if (line.startsWith("event:")) {
      const event = line.slice(6).trim();
      // The answer's end, or the API's error mid-stream: it ends here, as told.
      if (event === "error" || (event === "message_stop" && this.usageTold)) this.whole = true;
      return;
    }
    if (!line.startsWith("data:")) return;
    const json = line.slice(5).trim();
    if (!json.startsWith("{")) return;
    if (json.startsWith('{"type":"content_block_start"')) {
      // Server tools: their results count as input, told only at the end.
      if (json.includes('"server_tool_use"') && json.includes('"web_search"')) this.searches++;
      if (json.includes('_tool_result"')) this.resultBytes += json.length;
    }
    if (json.includes('"usage"')) this.json(json);
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
    this.usageTold = true;
    // A JSON answer tells its usage whole; a stream, at its message_stop.
    if (!this.sse && !start) this.whole = true;
    // What a server tool's results add is in the input told from now on.
    if (obj.type === "message_delta" && u.input_tokens != null) this.resultBytes = 0;
    if (u.speed === "fast") this.fastTold = true;
    if (typeof u.inference_geo === "string" && u.inference_geo !== "global")
      this.regionalTold = true;
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

  /** Takes each field's largest value so far; passes on what that adds, priced. */
  private raise(to: CallTokens): void {
    const more = { ...NO_TOKENS };
    for (const k of Object.keys(NO_TOKENS) as (keyof CallTokens)[]) {
      const v = Math.max(this.told[k], to[k]);
      more[k] = v - this.told[k];
      this.told[k] = v;
    }
    const usd = Math.max(
      this.usd,
      costOf(
        this.model,
        { ...this.told, fast: this.fastTold, regional: this.regionalTold },
        this.prices,
      ),
    );
    const moreUsd = usd - this.usd;
    this.usd = usd;
    if (moreUsd > 0 || Object.values(more).some((v) => v > 0)) this.add(more, moreUsd, this.model);
  }
}

/** Whether a request's key held anything but the string `plain` (absent: no). */
function asksBut(v: Readonly<KeyValues> | undefined, plain: string): boolean {
  if (!v) return false;
  return v.other || v.more || v.max !== undefined || [...v.strings].some((s) => s !== plain);
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
  speed?: unknown;
  inference_geo?: unknown;
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

/** Longest key, or number, read at a JSON object's top level: longer ones are not its key. */
const MAX_TOKEN_CHARS = 64;
/** What may follow a value inside an object, or a string, or nesting: a JSON tree's turns. */
const STRUCTURE = /["{}[\]]/g;

/** Where `mark` is next in `text` from `from`; Infinity when nowhere. */
function indexOr(text: string, mark: string, from: number): number {
  const at = text.indexOf(mark, from);
  return at === -1 ? Infinity : at;
}

/** What the values of one top-level key were, over all its duplicates. */
export interface KeyValues {
  /** The largest number among them. */
  max?: number;
  /** The strings among them (at most 8 kept; `more` when there were others). */
  strings: Set<string>;
  more: boolean;
  /** One was neither: an object, an array, true, false, null, or too long to read. */
  other: boolean;
}

const MAX_KEPT_STRINGS = 8;

/**
 * The values a JSON object's top-level `keys` hold, read from the object's text as it streams
 * by, as a JSON parser reads them: keys with their escapes decoded (`"max\u005ftokens"` is
 * max_tokens), strings and nested values passed over, never held; every duplicate counted.
 * Reads latin1 text of UTF-8 bytes: no byte of a multi-byte character is one of JSON's marks.
 */
export class TopLevelValues {
  private readonly keys: ReadonlySet<string>;
  private readonly found = new Map<string, KeyValues>();
  private notUtf8 = false;
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** At the top level, the next string is a key. */
  private keyNext = false;
  /** The raw text of the string being kept: a top-level key, or a kept key's string value. */
  private kept: string | undefined;
  /** Whose value the kept string is (undefined: it is a key). */
  private keptFor: string | undefined;
  /** A kept key just read, until its colon. */
  private key: string | undefined;
  /** The kept key whose value comes next. */
  private awaiting: string | undefined;
  /** The raw text of a kept key's value that is not a string, and whose it is. */
  private scalar: string | undefined;
  private scalarFor = "";
  /** The next quote and backslash in the text being read (see inStringFrom). */
  private quoteAt = -1;
  private slashAt = -1;

  constructor(keys: readonly string[]) {
    this.keys = new Set(keys);
  }

  /**
   * What `key` held, over the text fed so far; undefined when it was not there. In a text
   * that is not UTF-8 JSON (a NUL byte: UTF-16 or -32, which some parsers take), every key
   * holds something unreadable.
   */
  values(key: string): Readonly<KeyValues> | undefined {
    if (this.scalar !== undefined) this.endScalar();
    if (this.notUtf8) return { strings: new Set(), more: false, other: true };
    return this.found.get(key);
  }

  feed(text: string): void {
    if (text.includes("\0")) this.notUtf8 = true;
    this.quoteAt = this.slashAt = -1;
    let i = 0;
    while (i < text.length) {
      if (this.inString) {
        i = this.inStringFrom(text, i);
        continue;
      }
      if (this.depth > 1) {
        STRUCTURE.lastIndex = i;
        const m = STRUCTURE.exec(text);
        if (!m) return;
        i = m.index;
      }
      const c = text[i]!;
      const space = c === " " || c === "\n" || c === "\r" || c === "\t";
      if (this.scalar !== undefined) {
        if (space || c === "," || c === "}" || c === "]") {
          this.endScalar();
        } else {
          // Read to its end; one too long to keep is not a number it could be read as.
          if (this.scalar.length <= MAX_TOKEN_CHARS) this.scalar += c;
          i++;
          continue;
        }
      }
      if (this.awaiting !== undefined && !space) {
        const key = this.awaiting;
        this.awaiting = undefined;
        if (c === '"') {
          this.inString = true;
          this.kept = "";
          this.keptFor = key;
          i++;
          continue;
        }
        if (c !== "{" && c !== "[") {
          this.scalar = c;
          this.scalarFor = key;
          i++;
          continue;
        }
        this.entry(key).other = true; // and on, into it
      }
      if (c === '"') {
        this.inString = true;
        if (this.depth === 1 && this.keyNext) {
          this.kept = "";
          this.keptFor = undefined;
        }
        this.keyNext = false;
      } else if (c === "{" || c === "[") {
        this.depth++;
        this.keyNext = this.depth === 1 && c === "{";
      } else if (c === "}" || c === "]") {
        this.depth--;
      } else if (c === "," && this.depth === 1) {
        this.keyNext = true;
      } else if (c === ":" && this.depth === 1 && this.key !== undefined) {
        this.awaiting = this.key;
      }
      if (!space) this.key = undefined;
      i++;
    }
  }

  /** Reads on in a string from `i`: gives where to go on from. */
  private inStringFrom(text: string, i: number): number {
    if (this.escaped) {
      this.escaped = false;
      this.keep(text[i]!);
      i++;
    }
    if (this.kept === undefined) {
      // Not kept: passed over, escape by escape, each mark's next place found once per text.
      for (;;) {
        if (this.quoteAt < i) this.quoteAt = indexOr(text, '"', i);
        if (this.slashAt < i) this.slashAt = indexOr(text, "\\", i);
        if (this.quoteAt < this.slashAt) {
          this.inString = false;
          return this.quoteAt + 1;
        }
        if (this.slashAt === Infinity) return text.length;
        i = this.slashAt + 2;
        if (i > text.length) {
          this.escaped = true; // its escaped character is in the next text
          return text.length;
        }
      }
    }
    if (this.quoteAt < i) this.quoteAt = indexOr(text, '"', i);
    if (this.slashAt < i) this.slashAt = indexOr(text, "\\", i);
    const stop = Math.min(this.quoteAt, this.slashAt);
    if (stop === Infinity) {
      this.keep(text.slice(i));
      return text.length;
    }
    this.keep(text.slice(i, stop + 1));
    if (stop === this.slashAt) {
      this.escaped = true;
      return stop + 1;
    }
    this.inString = false;
    const decoded = decodeString(this.kept.slice(0, -1));
    this.kept = undefined;
    if (this.keptFor === undefined) {
      // Some parsers match keys whatever their case (Go's: with the Kelvin sign and long s).
      const folded = decoded?.toLowerCase().replace(/\u017f/g, "s");
      this.key = folded !== undefined && this.keys.has(folded) ? folded : undefined;
    } else {
      const e = this.entry(this.keptFor);
      if (decoded === undefined) e.other = true;
      else if (e.strings.size < MAX_KEPT_STRINGS) e.strings.add(decoded);
      else if (!e.strings.has(decoded)) e.more = true;
    }
    return stop + 1;
  }

  private keep(text: string): void {
    if (this.kept === undefined) return;
    // One more than a kept string may hold, and its closing quote: a longer one stays too long.
    this.kept = (this.kept + text).slice(0, MAX_TOKEN_CHARS + 2);
  }

  private endScalar(): void {
    const text = this.scalar ?? "";
    this.scalar = undefined;
    const e = this.entry(this.scalarFor);
    let n: unknown;
    try {
      n = JSON.parse(text);
    } catch {
      // not a JSON scalar
    }
    const kept = text.length <= MAX_TOKEN_CHARS;
    if (kept && typeof n === "number" && Number.isFinite(n)) e.max = Math.max(e.max ?? n, n);
    else e.other = true;
  }

  private entry(key: string): KeyValues {
    let e = this.found.get(key);
    if (!e) this.found.set(key, (e = { strings: new Set(), more: false, other: false }));
    return e;
  }
}

/** A JSON string's text, unescaped; undefined when it is not one, or too long to be kept. */
function decodeString(raw: string): string | undefined {
  if (raw.length > MAX_TOKEN_CHARS) return undefined;
  try {
    return JSON.parse(`"${raw}"`) as string;
  } catch {
    return undefined;
  }
}
