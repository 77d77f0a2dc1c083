import { mkdirSync } from "node:fs";
import path from "node:path";
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { GroupCommit } from "./group-commit.ts";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS messages (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL,
  receiver TEXT NOT NULL,
  sender TEXT NOT NULL,
  topic TEXT NOT NULL DEFAULT '',
  type INTEGER NOT NULL,
  payload TEXT NOT NULL,
  correlation_id TEXT NOT NULL DEFAULT '',
  create_time INTEGER NOT NULL,
  expire_time INTEGER NOT NULL,
  UNIQUE (receiver, id)
);
CREATE INDEX IF NOT EXISTS messages_expiry ON messages (expire_time);
CREATE TABLE IF NOT EXISTS agents (
  id TEXT PRIMARY KEY,
  create_time INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscriptions (
  topic TEXT NOT NULL,
  agent_id TEXT NOT NULL,
  PRIMARY KEY (topic, agent_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS open_requests (
  receiver TEXT NOT NULL,
  correlation_id TEXT NOT NULL,
  requester TEXT NOT NULL,
  answered INTEGER NOT NULL DEFAULT 0,
  expire_time INTEGER NOT NULL,
  PRIMARY KEY (receiver, correlation_id)
) WITHOUT ROWID;
`;

/** A stored message: one row per inbox it was delivered to. */
export interface MessageRow {
  seq: number;
  id: string;
  receiver: string;
  sender: string;
  topic: string;
  type: number;
  payload: string;
  correlation_id: string;
  create_time: number;
  expire_time: number;
}

/** What a new message row holds (seq is given by the database). */
export type NewMessage = Omit<MessageRow, "seq">;

/** A request waiting for its answer. */
export interface OpenRequest {
  receiver: string;
  correlation_id: string;
  requester: string;
  answered: number;
  expire_time: number;
}

/**
 * The Broker's durable state in `<dataDir>/broker.db` (SQLite, WAL, synchronous FULL):
 * every message not yet acknowledged, the known agents, topic memberships and open
 * requests. Writes go through `commit` (group commit): a write has reached the disk when
 * its promise resolves.
 */
export class BrokerStore {
  private readonly db: DatabaseSync;
  private readonly group: GroupCommit;
  private readonly statements = new Map<string, StatementSync>();

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    this.db = new DatabaseSync(path.join(dataDir, "broker.db"));
    this.db.exec(
      "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
    );
    this.db.exec(SCHEMA);
    this.group = new GroupCommit(this.db);
  }

  /** Runs `write` in the next group-commit batch; see GroupCommit. */
  commit<T>(write: () => T, applied?: (result: T) => void): Promise<T> {
    return this.group.run(write, applied);
  }

  /** Inserts one message row (inside a commit) and returns its sequence number. */
  insertMessage(m: NewMessage): number {
    const res = this.stmt(
      `INSERT INTO messages (id, receiver, sender, topic, type, payload, correlation_id, create_time, expire_time)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      m.id,
      m.receiver,
      m.sender,
      m.topic,
      m.type,
      m.payload,
      m.correlation_id,
      m.create_time,
      m.expire_time,
    );
    return Number(res.lastInsertRowid);
  }

  /** Removes messages of one inbox (inside a commit); returns how many were there. */
  deleteMessages(receiver: string, ids: string[]): number {
    const stmt = this.stmt("DELETE FROM messages WHERE receiver = ? AND id = ?");
    let n = 0;
    for (const id of ids) n += Number(stmt.run(receiver, id).changes);
    return n;
  }

  /** Removes expired messages and open requests (inside a commit). */
  deleteExpired(now: number): { messages: number; requests: number } {
    const messages = this.stmt("DELETE FROM messages WHERE expire_time <= ?").run(now);
    const requests = this.stmt("DELETE FROM open_requests WHERE expire_time <= ?").run(now);
    return { messages: Number(messages.changes), requests: Number(requests.changes) };
  }

  /** One message of one inbox. */
  message(receiver: string, id: string): MessageRow | undefined {
    return this.stmt("SELECT * FROM messages WHERE receiver = ? AND id = ?").get(receiver, id) as
      MessageRow | undefined;
  }

  /** Every stored message, in the order they were accepted (to rebuild inboxes at start). */
  allMessages(): Omit<MessageRow, "payload" | "topic" | "type" | "create_time">[] {
    return this.stmt(
      "SELECT seq, id, receiver, sender, correlation_id, expire_time FROM messages ORDER BY seq",
    ).all() as unknown as MessageRow[];
  }

  /** Makes an agent known (inside a commit); returns whether it was new. */
  addAgent(id: string, now: number): boolean {
    const res = this.stmt("INSERT OR IGNORE INTO agents (id, create_time) VALUES (?, ?)").run(
      id,
      now,
    );
    return res.changes === 1;
  }

  agents(): string[] {
    return this.stmt("SELECT id FROM agents ORDER BY id")
      .all()
      .map((r) => (r as { id: string }).id);
  }

  /** Joins topics (inside a commit). */
  subscribe(agentId: string, topics: string[]): void {
    const stmt = this.stmt("INSERT OR IGNORE INTO subscriptions (topic, agent_id) VALUES (?, ?)");
    for (const t of topics) stmt.run(t, agentId);
  }

  /** Leaves topics (inside a commit). */
  unsubscribe(agentId: string, topics: string[]): void {
    const stmt = this.stmt("DELETE FROM subscriptions WHERE topic = ? AND agent_id = ?");
    for (const t of topics) stmt.run(t, agentId);
  }

  subscriptions(): { topic: string; agent_id: string }[] {
    return this.stmt("SELECT topic, agent_id FROM subscriptions").all() as {
      topic: string;
      agent_id: string;
    }[];
  }

  openRequest(receiver: string, correlationId: string): OpenRequest | undefined {
    return this.stmt("SELECT * FROM open_requests WHERE receiver = ? AND correlation_id = ?").get(
      receiver,
      correlationId,
    ) as OpenRequest | undefined;
  }

  /**
   * Records a request (inside a commit). A request with the same receiver and correlation id
   * from the same requester is replaced; from another requester it is refused (false).
   */
  putOpenRequest(r: Omit<OpenRequest, "answered">): boolean {
    const res = this.stmt(
      `INSERT INTO open_requests (receiver, correlation_id, requester, answered, expire_time)
         VALUES (?, ?, ?, 0, ?)
         ON CONFLICT (receiver, correlation_id) DO UPDATE
           SET answered = 0, expire_time = excluded.expire_time
           WHERE open_requests.requester = excluded.requester`,
    ).run(r.receiver, r.correlation_id, r.requester, r.expire_time);
    return res.changes === 1;
  }

  /** Marks a request answered (inside a commit); false when it was answered already. */
  markAnswered(receiver: string, correlationId: string): boolean {
    const res = this.stmt(
      "UPDATE open_requests SET answered = 1 WHERE receiver = ? AND correlation_id = ? AND answered = 0",
    ).run(receiver, correlationId);
    return res.changes === 1;
  }

  private stmt(sql: string): StatementSync {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  /** Writes what is queued and closes the database. */
  close(): void {
    this.group.flush();
    this.db.close();
  }
}
