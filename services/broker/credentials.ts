import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { linkSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";

/** The Orchestrator's identity on the Broker; no agent may be called this. */
export const ORCHESTRATOR_ID = "orchestrator";

/** What an agent id (and so an identity) may look like. */
export const IDENTITY_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** The Broker's key file in the data folder. */
export const BROKER_KEY_FILE = "broker.key";

const KEY_BYTES = 32;

/** An authenticated caller of the Broker. */
export interface Identity {
  id: string;
  /** The Orchestrator may register agents and join them to topics. */
  orchestrator: boolean;
}

/**
 * The Broker's secret key, `<dataDir>/broker.key` (mode 0600), created on first use. Every
 * process of one node that shares the data folder (Broker, AgentHost) reads the same key;
 * creating it is atomic, so two processes starting at once agree on one key.
 */
export function loadBrokerSecret(dataDir: string): Buffer {
  const file = path.join(dataDir, BROKER_KEY_FILE);
  try {
    return readKey(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  mkdirSync(dataDir, { recursive: true });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}`;
  writeFileSync(tmp, randomBytes(KEY_BYTES), { mode: 0o600 });
  try {
    linkSync(tmp, file); // fails if another process made it first: then use theirs
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  } finally {
    rmSync(tmp, { force: true });
  }
  return readKey(file);
}

function readKey(file: string): Buffer {
  const mode = statSync(file).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new Error(
      `${file} is readable by others (mode ${mode.toString(8)}): run chmod 600 ${file}, or remove it to make a new key (agents then need new credentials)`,
    );
  }
  const key = readFileSync(file);
  if (key.length < KEY_BYTES) {
    throw new Error(
      `${file} holds ${key.length} bytes, fewer than ${KEY_BYTES}: remove it to make a new key`,
    );
  }
  return key;
}

function mac(secret: Buffer, id: string): string {
  return createHmac("sha256", secret).update(id).digest("base64url");
}

/** An agent's credential, `<agentId>.<HMAC-SHA256(secret, agentId)>`; only it may use it. */
export function agentCredential(secret: Buffer, agentId: string): string {
  if (!IDENTITY_RE.test(agentId)) {
    throw new Error(
      `agent id "${agentId}" is not usable on the Broker: use letters, digits, . _ : - (at most 128)`,
    );
  }
  if (agentId === ORCHESTRATOR_ID)
    throw new Error(`"${ORCHESTRATOR_ID}" is reserved for the Orchestrator`);
  return `${agentId}.${mac(secret, agentId)}`;
}

/** The Orchestrator's credential: it may also register agents and join them to topics. */
export function orchestratorCredential(secret: Buffer): string {
  return `${ORCHESTRATOR_ID}.${mac(secret, ORCHESTRATOR_ID)}`;
}

/** The identity a credential proves, or undefined when it is malformed or forged. */
export function verifyCredential(secret: Buffer, credential: string): Identity | undefined {
  const dot = credential.lastIndexOf(".");
  if (dot <= 0) return undefined;
  const id = credential.slice(0, dot);
  if (!IDENTITY_RE.test(id)) return undefined;
  const given = Buffer.from(credential.slice(dot + 1), "base64url");
  const expected = Buffer.from(mac(secret, id), "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined;
  return { id, orchestrator: id === ORCHESTRATOR_ID };
}
