// Who a peer is, in mutual TLS between Conductor's services: the SPIFFE ID in its
// certificate's URI SAN, spiffe://conductor/<role>/<name>.
import type { X509Certificate } from "node:crypto";

/** The kinds of party that hold a Conductor certificate. */
export type Role = "orchestrator" | "agent-host" | "broker" | "client";

/** Every role, in the order help lists them. */
export const ROLES: readonly Role[] = ["orchestrator", "agent-host", "broker", "client"];

/** The trust domain of every Conductor SPIFFE ID. */
export const TRUST_DOMAIN = "conductor";

/** A party's name within its role: 1–63 letters, digits, ".", "_" or "-", starting with a letter or digit. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** Who a certificate says its holder is. */
export interface Identity {
  role: Role;
  name: string;
  /** spiffe://conductor/<role>/<name> */
  spiffeId: string;
}

/** Whether `s` is one of ROLES. */
export function isRole(s: string): s is Role {
  return (ROLES as readonly string[]).includes(s);
}

/** The SPIFFE ID of `name` in `role`; throws when the name is not valid (see NAME_PATTERN). */
export function spiffeId(role: Role, name: string): string {
  if (!isRole(role)) throw new Error(`unknown role "${String(role)}": use ${ROLES.join(", ")}`);
  if (!NAME_PATTERN.test(name)) throw new Error(nameProblem(name));
  return `spiffe://${TRUST_DOMAIN}/${role}/${name}`;
}

/** Why `name` is not a valid name, for messages. */
export function nameProblem(name: string): string {
  return `"${name}" is not a valid name: use 1–63 letters, digits, ".", "_" or "-", starting with a letter or digit`;
}

const SPIFFE_ID = /^spiffe:\/\/conductor\/([a-z-]+)\/([^/?#]+)$/;

/**
 * The identity a URI names, or undefined unless it is exactly spiffe://conductor/<role>/<name>:
 * that scheme and trust domain in lower case, a known role, a valid name, and no further path,
 * query, fragment, port or user.
 */
export function parseSpiffeId(uri: string): Identity | undefined {
  const m = SPIFFE_ID.exec(uri);
  if (!m) return undefined;
  const [, role, name] = m as unknown as [string, string, string];
  if (!isRole(role) || !NAME_PATTERN.test(name)) return undefined;
  return { role, name, spiffeId: uri };
}

/**
 * The identity of a certificate: its one SPIFFE URI SAN, when that is a Conductor ID. A
 * certificate with no SPIFFE URI, or with more than one (of any trust domain), has none: a
 * SPIFFE certificate names exactly one identity, and guessing between two would be unsafe.
 */
export function identityOf(cert: X509Certificate): Identity | undefined {
  const spiffe = uriSans(cert.subjectAltName ?? "").filter((u) => /^spiffe:/i.test(u));
  return spiffe.length === 1 ? parseSpiffeId(spiffe[0]!) : undefined;
}

/**
 * The URI entries of a subjectAltName as Node prints it ("DNS:a, URI:spiffe://…, IP Address:…").
 * Node prints an entry whose value holds a comma, quote or control character as a JSON string
 * (`DNS:"a, URI:x"`), so such a value is read whole and never split into entries it only mentions.
 */
export function uriSans(subjectAltName: string): string[] {
  const uris: string[] = [];
  let at = 0;
  while (at < subjectAltName.length) {
    const colon = subjectAltName.indexOf(":", at);
    if (colon < 0) break;
    const type = subjectAltName.slice(at, colon);
    let value: string;
    let end: number;
    if (subjectAltName[colon + 1] === '"') {
      end = jsonStringEnd(subjectAltName, colon + 1);
      if (end < 0) return []; // not as Node prints it: trust nothing in it
      value = JSON.parse(subjectAltName.slice(colon + 1, end)) as string;
    } else {
      const comma = subjectAltName.indexOf(", ", colon);
      end = comma < 0 ? subjectAltName.length : comma;
      value = subjectAltName.slice(colon + 1, end);
    }
    if (type === "URI") uris.push(value);
    if (end < subjectAltName.length && !subjectAltName.startsWith(", ", end)) return [];
    at = end + 2;
  }
  return uris;
}

/** The index just past the JSON string that starts at `start` (a quote); -1 if it never ends. */
function jsonStringEnd(s: string, start: number): number {
  for (let i = start + 1; i < s.length; i++) {
    if (s[i] === "\\") i++;
    else if (s[i] === '"') return i + 1;
  }
  return -1;
}
