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
  WEB_SEARCH_USD,
} from "../shared/prices.ts";
import { CallMeter, MAX_OUTPUT_TOKENS, NO_TOKENS, type CallTokens } from "./usage-meter.ts";

/** A meter and the sum of what it charged. */
function metered(request: string) {
  const sum: CallTokens = { ...NO_TOKENS };
  const models: string[] = [];
  const meter = new CallMeter((more, model) => {
    for (const k of Object.keys(sum) as (keyof CallTokens)[]) sum[k] += more[k];
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
    expect(sum).toEqual({ ...NO_TOKENS, input: 2010, output: 300, cacheRead: 50, webSearches: 2 });
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
      expect(sum, what).toEqual({ ...NO_TOKENS, input, output: 5000 });
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
    expect(refused.sum).toEqual(NO_TOKENS);

    const sum: CallTokens = { ...NO_TOKENS };
    const unsent = new CallMeter((more) => Object.assign(sum, more));
    unsent.request(Buffer.from(REQUEST.slice(0, 20)));
    expect(unsent.cut()).toBe(true);
    expect(sum).toEqual(NO_TOKENS);
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
