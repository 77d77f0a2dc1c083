// What one model call is charged, from the answers the Messages API gives (and the ones it
// should not): cumulative message_delta usage, server tools, hour-long cache writes, odd line
// breaks and layouts, and answers that never tell their usage.
import { describe, expect, it } from "vitest";
import {
  CACHE_READ_FACTOR,
  CACHE_WRITE_1H_FACTOR,
  CACHE_WRITE_FACTOR,
  costOf,
  DEFAULT_PRICES,
  DATA_RESIDENCY_FACTOR,
  FAST_MODE_FACTOR,
  LONG_CONTEXT_INPUT_FACTOR,
  LONG_CONTEXT_OUTPUT_FACTOR,
  WEB_SEARCH_USD,
} from "../shared/prices.ts";
import {
  CallMeter,
  MAX_OUTPUT_TOKENS,
  NO_TOKENS,
  TopLevelValues,
  type CallTokens,
  type KeyValues,
} from "./usage-meter.ts";

/** A meter and the sum of what it charged (tokens, and dollars in `usd`). */
function metered(request: string) {
  const sum: CallTokens & { usd: number } = { ...NO_TOKENS, usd: 0 };
  const models: string[] = [];
  const meter = new CallMeter(DEFAULT_PRICES, (more, usd, model) => {
    for (const k of Object.keys(NO_TOKENS) as (keyof CallTokens)[]) sum[k] += more[k];
    sum.usd += usd;
    models.push(model);
  });
  meter.request(Buffer.from(request));
  meter.requestSent();
  return { meter, sum, models };
}

const sse = (events: [string, unknown][], eol = "\n") =>
  events.map(([e, d]) => `event: ${e}${eol}data: ${JSON.stringify(d)}${eol}${eol}`).join("");

const REQUEST = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 4096, messages: [] });

describe("CallMeter", () => {
  it("takes message_delta usage as the totals so far: several deltas, input told late, web searches", () => {
    const { meter, sum } = metered(REQUEST);
    meter.answer(200, { "content-type": "text/event-stream" });
    const stream = sse([
      [
        "message_start",
        {
          type: "message_start",
          message: { model: "claude-sonnet-4-5", usage: { input_tokens: 10, output_tokens: 1 } },
        },
      ],
      [
        "message_delta",
        {
          type: "message_delta",
          usage: {
            output_tokens: 100,
            input_tokens: 10,
            server_tool_use: { web_search_requests: 1 },
          },
        },
      ],
      [
        "message_delta",
        {
          type: "message_delta",
          usage: {
            output_tokens: 300,
            input_tokens: 2010,
            cache_read_input_tokens: 50,
            server_tool_use: { web_search_requests: 2 },
          },
        },
      ],
      ["message_stop", { type: "message_stop" }],
    ]);
    // Split anywhere: the meter reads whole lines.
    for (let i = 0; i < stream.length; i += 7) meter.body(Buffer.from(stream.slice(i, i + 7)));
    expect(meter.end()).toBe(true);
    expect(sum).toMatchObject({ input: 2010, output: 300, cacheRead: 50, webSearches: 2 });
    const p = DEFAULT_PRICES["claude-sonnet-4"]!;
    const usd = ((2010 + 50 * CACHE_READ_FACTOR) * p.input + 300 * p.output) / 1e6;
    expect(sum.usd).toBeCloseTo(usd + 2 * WEB_SEARCH_USD, 12);
  });

  it("reads streams broken by CR alone or CRLF, and a JSON answer laid over many lines", () => {
    for (const eol of ["\r", "\r\n"]) {
      const { meter, sum } = metered(REQUEST);
      meter.answer(200, { "content-type": "text/event-stream; charset=utf-8" });
      meter.body(
        Buffer.from(
          sse(
            [
              ["message_start", { type: "message_start", message: { usage: { input_tokens: 7 } } }],
              ["message_delta", { type: "message_delta", usage: { output_tokens: 9 } }],
              ["message_stop", { type: "message_stop" }],
            ],
            eol,
          ),
        ),
      );
      expect(meter.end()).toBe(true);
      expect(sum).toMatchObject({ input: 7, output: 9 });
    }
    const { meter, sum, models } = metered(REQUEST);
    meter.answer(200, { "content-type": "application/json" });
    const answer = {
      type: "message",
      model: "claude-haiku-4-5",
      usage: { input_tokens: 3, output_tokens: 4 },
    };
    meter.body(Buffer.from(JSON.stringify(answer, null, 2)));
    expect(meter.end()).toBe(true);
    expect(sum).toMatchObject({ input: 3, output: 4 });
    expect(models).toEqual(["claude-haiku-4-5"]);
  });

  it("charges the most an answer could cost when it never tells its usage", () => {
    const request = JSON.stringify({
      model: "claude-sonnet-4-5",
      max_tokens: 5000,
      // A smaller max_tokens elsewhere in the body does not lower the charge.
      tools: [{ name: "t", input_schema: { properties: { max_tokens: 1 } } }],
      messages: [{ role: "user", content: 'say "max_tokens": 2' }],
    });
    const bytes = Buffer.byteLength(request);
    const cases: [string, (m: CallMeter) => void][] = [
      ["a 200 without usage", (m) => (m.answer(200, {}), m.body(Buffer.from("{}")))],
      ["an encoding not asked for", (m) => m.answer(200, { "content-encoding": "gzip" })],
      ["no answer yet", () => undefined],
      [
        "a stream cut before its message_delta",
        (m) => {
          m.answer(200, { "content-type": "text/event-stream" });
          m.body(
            Buffer.from(
              sse([
                [
                  "message_start",
                  { type: "message_start", message: { usage: { input_tokens: 40 } } },
                ],
              ]),
            ),
          );
        },
      ],
    ];
    for (const [what, answer] of cases) {
      const { meter, sum } = metered(request);
      answer(meter);
      expect(meter.end(), what).toBe(false);
      const input = what.startsWith("a stream") ? 40 : bytes;
      expect(sum, what).toMatchObject({ ...NO_TOKENS, input, output: 5000 });
    }
    // A request naming no max_tokens (the API refuses it, but it was cut before): the most.
    const { meter, sum } = metered("{}");
    expect(meter.cut()).toBe(false);
    expect(sum.output).toBe(MAX_OUTPUT_TOKENS);
  });

  it("charges nothing for an error answer, nor for a request that never all went upstream", () => {
    const refused = metered(REQUEST);
    refused.meter.answer(529, { "content-type": "application/json" });
    refused.meter.body(Buffer.from('{"type":"error","error":{"type":"overloaded_error"}}'));
    expect(refused.meter.end()).toBe(true);
    expect(refused.sum).toEqual({ ...NO_TOKENS, usd: 0 });

    const unsent = new CallMeter(DEFAULT_PRICES, () => expect.unreachable("charged"));
    unsent.request(Buffer.from(REQUEST.slice(0, 20)));
    expect(unsent.cut()).toBe(true);
  });

  it("ends a stream at the API's error event, charged what it told", () => {
    const { meter, sum } = metered(REQUEST);
    meter.answer(200, { "content-type": "text/event-stream" });
    meter.body(
      Buffer.from(
        sse([
          [
            "message_start",
            { type: "message_start", message: { usage: { input_tokens: 5, output_tokens: 1 } } },
          ],
          ["error", { type: "error", error: { type: "overloaded_error", message: "Overloaded" } }],
        ]),
      ),
    );
    expect(meter.end()).toBe(true);
    expect(sum).toMatchObject({ input: 5, output: 1 });
  });
});

describe("costOf", () => {
  it("prices hour-long cache writes at 2×, 5-minute ones at 1.25×, hits at 0.1×, and web searches", () => {
    const p = DEFAULT_PRICES["claude-sonnet-4"]!;
    const cost = costOf(
      "claude-sonnet-4-5",
      {
        input: 10,
        output: 20,
        cacheWrite: 3000,
        cacheWrite1h: 1000,
        cacheRead: 500,
        webSearches: 3,
      },
      DEFAULT_PRICES,
    );
    const inputs =
      10 + 2000 * CACHE_WRITE_FACTOR + 1000 * CACHE_WRITE_1H_FACTOR + 500 * CACHE_READ_FACTOR;
    expect(cost).toBeCloseTo((inputs * p.input + 20 * p.output) / 1e6 + 3 * WEB_SEARCH_USD, 12);
    expect(CACHE_WRITE_1H_FACTOR).toBe(2);
  });
});

describe("TopLevelValues", () => {
  /** max_tokens as the meter takes it: one plain number, or none. */
  const plain = (v: Readonly<KeyValues> | undefined) =>
    v && !v.other && !v.more && v.strings.size === 0 ? v.max : undefined;

  it("reads max_tokens as a JSON parser does, whatever the chunks: escaped keys, nesting, duplicates", () => {
    const cases: [string, number | undefined][] = [
      ['{"model":"x","max_tokens":5000,"messages":[]}', 5000],
      // The key escaped; smaller ones nested or in strings do not count.
      ['{"max\\u005ftokens": 64000, "tools":[{"input_schema":{"max_tokens":1}}]}', 64000],
      ['{"a":{"max_tokens":3},"b":[1,{"c":"}"}],"m":"\\"max_tokens\\": 2","max_tokens":9}', 9],
      ['{"a":"\\\\","max_tokens":7}', 7],
      // A string value with the marks of JSON in it does not lose the reader.
      ['{"speed":"a,\\"max_tokens\\":1,}","max_tokens":11}', 11],
      // Duplicates: the largest; one not a plain number (the API may read "64000" as 64000): none.
      ['{"max_tokens":1,"max_tokens":1e5}', 100000],
      ['{"max_tokens":1,"max_tokens":"64000"}', undefined],
      ['{"max_tokens":{"x":1}}', undefined],
      ['{"max_tokens":1,"max_tokens":true}', undefined],
      ['{ "max_tokens" : 5000.5 }', 5000.5],
      // A number too long to keep is none: its end may change what it is.
      [`{"max_tokens":6.${"0".repeat(80)}4e4}`, undefined],
      ['{"tools":[{"max_tokens":1}]}', undefined],
      // A key in another case, as some parsers take it: counted too.
      ['{"max_tokens":1,"MAX_TO\\u212aENS":50000}', 50000],
      ['{"max_tokens":1,"max_token\\u017f":50000}', 50000],
    ];
    for (const [json, want] of cases)
      for (const step of [1, 2, 3, 7, 4096]) {
        const read = new TopLevelValues(["max_tokens", "speed"]);
        for (let i = 0; i < json.length; i += step) read.feed(json.slice(i, i + step));
        expect(plain(read.values("max_tokens")), `${json} in chunks of ${step}`).toBe(want);
      }
  });

  it("reads a key or value of many escapes in time linear in its length", () => {
    const read = new TopLevelValues(["max_tokens", "speed"]);
    const escapes = "\\n".repeat(800_000);
    const started = process.cpuUsage();
    read.feed(`{"speed":"${escapes}","${escapes}":1,"max_tokens":5}`);
    const cpuMs = (process.cpuUsage(started).user + process.cpuUsage(started).system) / 1000;
    expect(read.values("max_tokens")?.max).toBe(5);
    expect(read.values("speed")).toMatchObject({ other: true });
    // Quadratic, this took 14 s on a 2-core machine; linear, 0.3 s.
    expect(cpuMs).toBeLessThan(3000);
  });

  it("takes a text that is not UTF-8 (a parser may take UTF-16) for unreadable", () => {
    const read = new TopLevelValues(["max_tokens", "speed"]);
    read.feed(Buffer.from('{"max_tokens":1,"speed":"fast"}', "utf16le").toString("latin1"));
    expect(read.values("speed")).toMatchObject({ other: true });
    expect(plain(read.values("max_tokens"))).toBeUndefined();
  });

  it("charges a cut call the max_tokens its request truly asked, not a decoy", () => {
    const request =
      '{"model":"claude-sonnet-4-5","tools":[{"name":"t","input_schema":{"max_tokens":1}}],' +
      '"max\\u005ftokens":64000,"messages":[]}';
    const { meter, sum } = metered(request);
    expect(meter.cut()).toBe(false);
    expect(sum.output).toBe(64000);
  });
});

describe("CallMeter: what server tools, long contexts and fast mode cost", () => {
  const start = (input: number) =>
    sse([
      [
        "message_start",
        {
          type: "message_start",
          message: { model: "claude-sonnet-4-5", usage: { input_tokens: input, output_tokens: 1 } },
        },
      ],
    ]);

  it("charges a call cut after its web searches for the searches and their results", () => {
    const request = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 1024, messages: [] });
    const { meter, sum } = metered(request);
    meter.answer(200, { "content-type": "text/event-stream" });
    meter.body(Buffer.from(start(500)));
    let results = 0;
    for (let i = 0; i < 3; i++) {
      const use = {
        type: "content_block_start",
        index: 2 * i,
        content_block: { type: "server_tool_use", id: `s${i}`, name: "web_search", input: {} },
      };
      const result = {
        type: "content_block_start",
        index: 2 * i + 1,
        content_block: {
          type: "web_search_tool_result",
          tool_use_id: `s${i}`,
          content: [{ type: "web_search_result", encrypted_content: "x".repeat(20_000) }],
        },
      };
      results += JSON.stringify(result).length;
      meter.body(
        Buffer.from(
          sse([
            ["content_block_start", use],
            ["content_block_start", result],
          ]),
        ),
      );
    }
    expect(meter.cut()).toBe(false);
    expect(sum).toMatchObject({ input: 500 + results, output: 1024, webSearches: 3 });
  });

  it("prices a call over 200,000 input tokens at the long-context rates, and fast mode at 6×", () => {
    const p = DEFAULT_PRICES["claude-sonnet-4"]!;
    const answer = (usage: Record<string, unknown>) => {
      const { meter, sum } = metered(REQUEST);
      meter.answer(200, { "content-type": "application/json" });
      meter.body(Buffer.from(JSON.stringify({ model: "claude-sonnet-4-5", usage })));
      expect(meter.end()).toBe(true);
      return sum.usd;
    };
    expect(
      answer({ input_tokens: 150_000, cache_read_input_tokens: 60_000, output_tokens: 10 }),
    ).toBeCloseTo(
      ((150_000 + 60_000 * CACHE_READ_FACTOR) * p.input * LONG_CONTEXT_INPUT_FACTOR +
        10 * p.output * LONG_CONTEXT_OUTPUT_FACTOR) /
        1e6,
      12,
    );
    expect(answer({ input_tokens: 100, output_tokens: 10, speed: "fast" })).toBeCloseTo(
      ((100 * p.input + 10 * p.output) * FAST_MODE_FACTOR) / 1e6,
      12,
    );
  });

  it("prices a call kept to a region at 1.1×, told or asked", () => {
    const p = DEFAULT_PRICES["claude-sonnet-4"]!;
    const base = (10 * p.input + 100 * p.output) / 1e6;
    const told = metered(REQUEST);
    told.meter.answer(200, { "content-type": "application/json" });
    const answer = {
      model: "claude-sonnet-4-5",
      usage: { input_tokens: 10, output_tokens: 100, inference_geo: "us" },
    };
    told.meter.body(Buffer.from(JSON.stringify(answer)));
    expect(told.meter.end()).toBe(true);
    expect(told.sum.usd).toBeCloseTo(base * DATA_RESIDENCY_FACTOR, 12);
    const asked = metered(JSON.stringify({ max_tokens: 100, inference_geo: "eu", messages: [] }));
    asked.meter.answer(200, { "content-type": "text/event-stream" });
    asked.meter.body(Buffer.from(start(10)));
    expect(asked.meter.cut()).toBe(false);
    expect(asked.sum.usd).toBeCloseTo(base * DATA_RESIDENCY_FACTOR, 12);
  });

  it("charges a cut call that asked for fast mode at fast mode's price", () => {
    const request = JSON.stringify({ model: "m", max_tokens: 100, speed: "fast", messages: [] });
    const { meter, sum } = metered(request);
    meter.answer(200, { "content-type": "text/event-stream" });
    meter.body(Buffer.from(start(10)));
    expect(meter.cut()).toBe(false);
    const p = DEFAULT_PRICES["claude-sonnet-4"]!;
    expect(sum.usd).toBeCloseTo(((10 * p.input + 100 * p.output) * FAST_MODE_FACTOR) / 1e6, 12);
  });
});
