/** What a model's tokens cost, in US dollars per million tokens. */
export interface ModelPrice {
  input: number;
  output: number;
}

/**
 * Prices when agent.prices names none, by model id prefix (USD per million input / output
 * tokens, from Anthropic's published price list, https://docs.anthropic.com/en/docs/about-claude/pricing).
 * `default` prices a model no key matches as the dearest family, so a budget is never
 * overspent for want of a price.
 */
export const DEFAULT_PRICES: Readonly<Record<string, ModelPrice>> = {
  "claude-opus-4": { input: 15, output: 75 },
  "claude-opus-4-5": { input: 5, output: 25 },
  "claude-opus-4-6": { input: 5, output: 25 },
  "claude-sonnet-4": { input: 3, output: 15 },
  "claude-3-7-sonnet": { input: 3, output: 15 },
  "claude-3-5-sonnet": { input: 3, output: 15 },
  "claude-haiku-4": { input: 1, output: 5 },
  "claude-3-5-haiku": { input: 0.8, output: 4 },
  "claude-3-haiku": { input: 0.25, output: 1.25 },
  default: { input: 15, output: 75 },
};

/**
 * The price of `model`: the table's entry for the id itself, else for the longest key the id
 * starts with, else `default` (else DEFAULT_PRICES' default).
 */
export function priceOf(model: string, table: Readonly<Record<string, ModelPrice>>): ModelPrice {
  if (table[model]) return table[model];
  let best: string | undefined;
  for (const key of Object.keys(table)) {
    if (key !== "default" && model.startsWith(key) && key.length > (best?.length ?? 0)) best = key;
  }
  return (best && table[best]) || table["default"] || DEFAULT_PRICES["default"]!;
}

/**
 * What writing an input token to the prompt cache and reading one from it cost, as a share of
 * the model's input price (Anthropic's price list: cache writes for 5 minutes 1.25×, for an
 * hour 2×, cache hits 0.1×, https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching#pricing).
 */
export const CACHE_WRITE_FACTOR = 1.25;
export const CACHE_WRITE_1H_FACTOR = 2;
export const CACHE_READ_FACTOR = 0.1;
/**
 * US dollars a server-side web search costs, whatever the model ($10 per 1,000 searches,
 * https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/web-search-tool#usage-and-pricing).
 */
export const WEB_SEARCH_USD = 0.01;

/**
 * A call whose input (cached or not) is over this many tokens is priced at the long-context
 * rates: input 2×, output 1.5× (Anthropic's price list, e.g. Sonnet 4.5's $6 / $22.50 over
 * $3 / $15, https://docs.anthropic.com/en/docs/about-claude/pricing#long-context-pricing).
 * Applied to every model: one that has no such rates cannot take such a prompt.
 */
export const LONG_CONTEXT_TOKENS = 200_000;
export const LONG_CONTEXT_INPUT_FACTOR = 2;
export const LONG_CONTEXT_OUTPUT_FACTOR = 1.5;
/**
 * Fast mode (`speed: "fast"`) prices every token at 6× (Opus 4.6's $30 / $150 over $5 / $25,
 * stacking with the long-context rates; https://docs.anthropic.com/en/docs/build-with-claude/fast-mode).
 */
export const FAST_MODE_FACTOR = 6;
/**
 * A call kept to a region (`inference_geo` other than "global") prices every token at 1.1×
 * (https://docs.anthropic.com/en/docs/build-with-claude/data-residency).
 */
export const DATA_RESIDENCY_FACTOR = 1.1;

/** Tokens and requests of a model's answer, as its usage tells them (see usage-meter.ts). */
export interface PricedUsage {
  input: number;
  output: number;
  /** Input written to the prompt cache, for 5 minutes or an hour... */
  cacheWrite?: number;
  /** ...of which for an hour. */
  cacheWrite1h?: number;
  cacheRead?: number;
  webSearches?: number;
  /** Served in fast mode (usage.speed "fast"). */
  fast?: boolean;
  /** Kept to a region (usage.inference_geo other than "global"). */
  regional?: boolean;
}

/**
 * US dollars `u`, one call's usage, costs on `model`: cached input priced from its input price,
 * a long context's and fast mode's rates from the call's totals (so priced whole, not by parts).
 */
export function costOf(
  model: string,
  u: PricedUsage,
  table: Readonly<Record<string, ModelPrice>>,
): number {
  const p = priceOf(model, table);
  const write1h = Math.min(u.cacheWrite1h ?? 0, u.cacheWrite ?? 0);
  const write5m = (u.cacheWrite ?? 0) - write1h;
  const inputs =
    u.input +
    write5m * CACHE_WRITE_FACTOR +
    write1h * CACHE_WRITE_1H_FACTOR +
    (u.cacheRead ?? 0) * CACHE_READ_FACTOR;
  const long = u.input + (u.cacheWrite ?? 0) + (u.cacheRead ?? 0) > LONG_CONTEXT_TOKENS;
  const speed = (u.fast ? FAST_MODE_FACTOR : 1) * (u.regional ? DATA_RESIDENCY_FACTOR : 1);
  const input = p.input * speed * (long ? LONG_CONTEXT_INPUT_FACTOR : 1);
  const output = p.output * speed * (long ? LONG_CONTEXT_OUTPUT_FACTOR : 1);
  return (inputs * input + u.output * output) / 1_000_000 + (u.webSearches ?? 0) * WEB_SEARCH_USD;
}
