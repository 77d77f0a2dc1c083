import { mkdirSync } from "node:fs";
import path from "node:path";
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { isDiskFull, StorageFull } from "../shared/errors.ts";
import { BrokerClosedError } from "./errors.ts";
import { GroupCommit } from "../shared/group-commit.ts";
import { storePragmas } from "../shared/sqlite.ts";

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
  reply INTEGER NOT NULL DEFAULT 0,
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
  requester TEXT NOT NULL,
  correlation_id TEXT NOT NULL,
  answered INTEGER NOT NULL DEFAULT 0,
  expire_time INTEGER NOT NULL,
  PRIMARY KEY (receiver, requester, correlation_id)
) WITHOUT ROWID;
`;

/** SQLite's primary result code for a database another connection holds locked. */
const SQLITE_BUSY = 5;

/**
 * Brings a broker.db made before version 1 up to date, in one transaction: messages get the
 * `reply` column (older replies count as ordinary messages), and open requests are keyed by
 * their requester too, so a correlation id belongs to the agent that asked.
 */
function migrate(db: DatabaseSync): void {
  const columns = (table: string) =>
    db.prepare(`PRAGMA table_info(${table})`).all() as { name: string; pk: number }[];
  const hasReply = columns("messages").some((c) => c.name === "reply");
  const requesterInKey = columns("open_requests").some((c) => c.name === "requester" && c.pk > 0);
  if (hasReply && requesterInKey) return;
  db.exec("BEGIN IMMEDIATE");
  try {
    if (!hasReply) db.exec("ALTER TABLE messages ADD COLUMN reply INTEGER NOT NULL DEFAULT 0");
    if (!requesterInKey) {
      db.exec(`
        ALTER TABLE open_requests RENAME TO open_requests_v0;
        ${SCHEMA.slice(SCHEMA.indexOf("CREATE TABLE IF NOT EXISTS open_requests"))}
        INSERT INTO open_requests (receiver, requester, correlation_id, answered, expire_time)
          SELECT receiver, requester, correlation_id, answered, expire_time FROM open_requests_v0;
        DROP TABLE open_requests_v0;`);
    }
    db.exec("COMMIT");
  } catch (e) {
    db.exec("ROLLBACK");
    throw new Error(`could not bring broker.db up to date (nothing was changed): ${String(e)}`, {
      cause: e,
    });
  }
}

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
  /** 1 for the answer to a request (Reply): it uses the inbox's reserved places. */
  reply: number;
}

/** What a new message row holds (seq is given by the database). */
export type NewMessage = Omit<MessageRow, "seq">;

/** A request waiting for its answer; its correlation id is its requester's own. */
export interface OpenRequest {
  receiver: string;
  requester: string;
  correlation_id: string;
  answered: number;
  expire_time: number;
}

/**
 * The Broker's durable state in `<dataDir>/broker.db` (SQLite, WAL, synchronous FULL):
 * every message not yet acknowledged, the known agents, topic memberships and open
 * requests (a database from before is migrated on open). Writes go through `commit` (group
 * commit): a write has reached the disk when its promise resolves; one the disk has no room
 * for fails with StorageFull (RESOURCE_EXHAUSTED naming the folder) and changes nothing.
 *
 * The database is opened in exclusive locking mode: this process alone uses it (a second
 * Broker on the same folder is refused before it touches anything), and WAL then keeps its
 * index in memory instead of a -shm file, so a Broker restarted on a full disk opens what it
 * stored and serves it (a -shm file could not be made there).
 */
export class BrokerStore {
  private readonly db: DatabaseSync;
  private readonly group: GroupCommit;
  private readonly statements = new Map<string, StatementSync>();
  private readonly where: string;
  private closed = false;

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    this.where = `the Broker's data folder (${dataDir})`;
    this.db = new DatabaseSync(path.join(dataDir, "broker.db"));
    try {
      this.db.exec(storePragmas({ synchronous: true }));
      this.db.exec(SCHEMA);
      migrate(this.db);
    } catch (e) {
      this.db.close();
      if (isDiskFull(e)) throw new StorageFull(this.where, e);
      if (((e as { errcode?: number }).errcode ?? 0) % 256 === SQLITE_BUSY) {
        throw new Error(
          `${path.join(dataDir, "broker.db")} is in use by another running Broker (one Broker per data folder): stop that one, or give this one another storage.data_dir`,
          { cause: e },
        );
      }
      throw e;
    }
    this.group = new GroupCommit(this.db);
  }

  /** Runs `write` in the next group-commit batch; see GroupCommit. */
  commit<T>(write: () => T, applied?: (result: T) => void): Promise<T> {
    if (this.closed) return Promise.reject(new BrokerClosedError());
    return this.group.run(write, applied).catch((e: unknown) => {
      throw isDiskFull(e) ? new StorageFull(this.where, e) : e;
    });
  }

  /** Inserts one message row (inside a commit) and returns its sequence number. */
  insertMessage(m: NewMessage): number {
    const res = this.stmt(
      `INSERT INTO messages (id, receiver, sender, topic, type, payload, correlation_id, create_time, expire_time, reply)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
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
      m.reply,
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
      "SELECT seq, id, receiver, sender, correlation_id, expire_time, reply FROM messages ORDER BY seq",
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

  /** The request `requester` made of `receiver` with this correlation id. */
  openRequest(receiver: string, requester: string, correlationId: string): OpenRequest | undefined {
    return this.stmt(
      "SELECT * FROM open_requests WHERE receiver = ? AND requester = ? AND correlation_id = ?",
    ).get(receiver, requester, correlationId) as OpenRequest | undefined;
  }

  /** Every request made of `receiver` with this correlation id, whoever asked. */
  openRequestsTo(receiver: string, correlationId: string): OpenRequest[] {
    return this.stmt(
      "SELECT * FROM open_requests WHERE receiver = ? AND correlation_id = ? ORDER BY requester",
    ).all(receiver, correlationId) as unknown as OpenRequest[];
  }

  /**
   * Records a request (inside a commit); asking again with the same receiver and correlation
   * id opens the same request anew. Another requester's id never clashes with it.
   */
  putOpenRequest(r: Omit<OpenRequest, "answered">): void {
    this.stmt(
      `INSERT INTO open_requests (receiver, requester, correlation_id, answered, expire_time)
         VALUES (?, ?, ?, 0, ?)
         ON CONFLICT (receiver, requester, correlation_id) DO UPDATE
           SET answered = 0, expire_time = excluded.expire_time`,
    ).run(r.receiver, r.requester, r.correlation_id, r.expire_time);
  }

  /** Marks a request answered (inside a commit); false when it was answered already. */
  markAnswered(receiver: string, requester: string, correlationId: string): boolean {
    const res = this.stmt(
      `UPDATE open_requests SET answered = 1
         WHERE receiver = ? AND requester = ? AND correlation_id = ? AND answered = 0`,
    ).run(receiver, requester, correlationId);
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
    if (this.closed) return;
    this.group.flush();
    this.closed = true;
    this.db.close();
  }
}
