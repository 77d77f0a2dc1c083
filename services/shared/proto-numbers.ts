/**
 * What an untrusted JSON value (a CLI's result line, an API's usage) may put into a protobuf
 * number field: a field that cannot hold it fails the whole message's encoding, so a value is
 * clamped to what the field can take instead, and anything not a finite number is 0.
 */

/** A count for an int64 field: whole, from 0 to 2^53 − 1 (what a JSON number says exactly). */
export function int64(v: unknown): bigint {
  return BigInt(Math.trunc(clamp(v, Number.MAX_SAFE_INTEGER)));
}

/** A count for an int32 field: whole, from 0 to 2^31 − 1. */
export function int32(v: unknown): number {
  return Math.trunc(clamp(v, 2 ** 31 - 1));
}

/** An amount for a double field: finite, from 0. */
export function amount(v: unknown): number {
  return clamp(v, Number.MAX_VALUE);
}

function clamp(v: unknown, most: number): number {
  return typeof v === "number" && Number.isFinite(v) ? Math.min(Math.max(v, 0), most) : 0;
}
