// GroupCommit on a real SQLite database: a failing write is undone alone, and a batch SQLite
// undoes whole (a write spilling to a full disk) rejects exactly its writers, never throws
// out of the event loop, and leaves the database ready for the next batch.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { describe, expect, it } from "vitest";
import { GroupCommit } from "./group-commit.ts";

/** A database in a folder of its own (on a 3 MB tmpfs when `small`); disposing removes both. */
function database(small: boolean): DatabaseSync & { dir: string; [Symbol.dispose](): void } {
  const dir = mkdtempSync(path.join(tmpdir(), "group-commit-"));
  if (small) execFileSync("mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", dir]);
  const db = new DatabaseSync(path.join(dir, "t.db"));
  // A small page cache: a large write spills to the disk before its COMMIT.
  db.exec(`PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = 64;
    CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT NOT NULL)`);
  return Object.assign(db, {
    dir,
    [Symbol.dispose]() {
      db.close();
      if (small) execFileSync("umount", ["--lazy", dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  });
}

const keys = (db: DatabaseSync) =>
  db
    .prepare("SELECT k FROM t ORDER BY k")
    .all()
    .map((r) => (r as { k: string }).k);

describe("GroupCommit", () => {
  it("undoes a failing write alone; the rest of its batch commits, applied in order", async () => {
    using db = database(false);
    const group = new GroupCommit(db);
    const insert = db.prepare("INSERT INTO t VALUES (?, ?)");
    const applied: string[] = [];
    const write = (k: string) =>
      group.run(
        () => insert.run(k, "v"),
        () => applied.push(k),
      );
    const outcomes = await Promise.allSettled([write("a"), write("a"), write("b")]);
    expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect(applied).toEqual(["a", "b"]);
    expect(keys(db)).toEqual(["a", "b"]);
  });

  it("undoes a write alone in its batch that fails half-way; the next batch commits", async () => {
    using db = database(false);
    const group = new GroupCommit(db);
    const insert = db.prepare("INSERT INTO t VALUES (?, ?)");
    const applied: string[] = [];
    await group.run(() => insert.run("a", "v"));
    const failing = group.run(
      () => {
        insert.run("b", "v"); // written, then undone with the rest of the write
        insert.run("a", "v");
      },
      () => applied.push("b"),
    );
    await expect(failing).rejects.toThrow(/UNIQUE/);
    await group.run(
      () => insert.run("c", "v"),
      () => applied.push("c"),
    );
    expect(applied).toEqual(["c"]);
    expect(keys(db)).toEqual(["a", "c"]);
  });

  it.skipIf(process.getuid?.() !== 0)(
    "rejects exactly the writers of a batch SQLite undoes whole, and commits the next batch",
    async () => {
      using db = database(true);
      const filler = path.join(db.dir, "filler");
      writeFileSync(filler, Buffer.alloc(2_000_000));
      const group = new GroupCommit(db);
      const insert = db.prepare("INSERT INTO t VALUES (?, ?)");
      const applied: string[] = [];
      const write = (k: string, bytes: number) =>
        group.run(
          () => insert.run(k, "x".repeat(bytes)),
          () => applied.push(k),
        );
      const batch = [write("small-1", 10), write("huge", 60_000), write("small-2", 10)];
      const huge = [...Array(40).keys()].map((i) => write(`huge-${i}`, 60_000));
      const outcomes = await Promise.allSettled([...batch, ...huge]);
      expect(outcomes.every((o) => o.status === "rejected")).toBe(true);
      expect(String((outcomes[0] as PromiseRejectedResult).reason)).toMatch(/disk is full/);
      expect(applied).toEqual([]);
      expect(keys(db)).toEqual([]);
      rmSync(filler);
      await write("after", 10);
      expect(keys(db)).toEqual(["after"]);
      expect(applied).toEqual(["after"]);
    },
  );
});
