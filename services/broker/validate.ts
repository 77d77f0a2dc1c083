import { IDENTITY_RE, type Identity } from "./credentials.ts";
import { InvalidInputError, NotAllowedError } from "./errors.ts";

/** What a topic name may look like. */
export const TOPIC_RE = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

const CORRELATION_MAX = 128;

/** A topic name, or INVALID_ARGUMENT saying what is wrong with it. */
export function checkTopic(topic: string): string {
  if (topic.trim() === "") throw new InvalidInputError("topic must not be empty");
  if (!TOPIC_RE.test(topic)) {
    throw new InvalidInputError(
      `topic "${topic}" is not valid: use letters, digits, . _ : / - (at most 128, starting with a letter or digit)`,
    );
  }
  return topic;
}

/** Topic names, each checked, without repeats. */
export function checkTopics(topics: string[]): string[] {
  return [...new Set(topics.map(checkTopic))];
}

/** An agent id named as a receiver, or INVALID_ARGUMENT. */
export function checkAgentId(id: string, field: string): string {
  if (id === "") throw new InvalidInputError(`${field} must not be empty`);
  if (!IDENTITY_RE.test(id)) {
    throw new InvalidInputError(
      `${field} "${id}" is not a valid agent id: letters, digits, . _ : - (at most 128)`,
    );
  }
  return id;
}

/** The payload within the Broker's limit, or INVALID_ARGUMENT naming both sizes. */
export function checkPayload(payload: string, maxBytes: number): void {
  const size = Buffer.byteLength(payload, "utf8");
  if (size > maxBytes) {
    throw new InvalidInputError(
      `payload is ${size} bytes, over the limit of ${maxBytes} (broker.max_payload_bytes); send a smaller one, e.g. a path to a file in a shared workspace`,
    );
  }
}

/** A correlation id within bounds, or INVALID_ARGUMENT. */
export function checkCorrelationId(id: string): string {
  if (id.length > CORRELATION_MAX) {
    throw new InvalidInputError(`correlation_id is longer than ${CORRELATION_MAX} characters`);
  }
  return id;
}

/** A field naming "who I am" must be empty or the caller's own identity. */
export function checkSelf(
  caller: Identity,
  claimed: string,
  what: "send as" | "read the inbox of",
): void {
  if (claimed !== "" && claimed !== caller.id) {
    throw new NotAllowedError(
      what === "send as"
        ? `"${caller.id}" may not send as "${claimed}": the sender is always the caller's own identity`
        : `"${caller.id}" may not read the inbox of "${claimed}": a caller reads only its own inbox`,
    );
  }
}
