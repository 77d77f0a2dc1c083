import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { afterEach, describe, expect, it } from "vitest";
import { ServiceLockedError, lockService } from "./lock.ts";

const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(path.join(tmpdir(), "conductor-lock-"));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("lockService", () => {
  it("refuses a second holder of the same service and folder, naming the first", async () => {
    const dir = tempDir();
    const first = await lockService("agent-host", dir);
    try {
      const second = lockService("agent-host", path.join(dir, "."));
      await expect(second).rejects.toThrow(ServiceLockedError);
      await expect(second).rejects.toThrow(
        new RegExp(
          `another agent-host already runs on the data folder ${dir} \\(pid ${process.pid}, `,
        ),
      );
      // Another service, or another folder, is free.
      await (await lockService("broker", dir)).release();
      await (await lockService("agent-host", tempDir())).release();
    } finally {
      await first.release();
    }
    // Released: the next one gets it.
    await (await lockService("agent-host", dir)).release();
  });

  it("sees one folder through a symbolic link to it", async () => {
    const dir = tempDir();
    const link = path.join(tempDir(), "link");
    symlinkSync(dir, link);
    const first = await lockService("orchestrator", path.join(dir, "data"));
    try {
      await expect(lockService("orchestrator", path.join(link, "data"))).rejects.toThrow(
        /another orchestrator already runs/,
      );
    } finally {
      await first.release();
    }
  });

  it("is free at once after its holder is killed with SIGKILL", async () => {
    const dir = tempDir();
    const holder = spawn(
      process.execPath,
      [
        "-e",
        `import(${JSON.stringify(path.join(import.meta.dirname, "lock.ts"))}).then(async (m) => { await m.lockService("broker", ${JSON.stringify(dir)}); console.log("held"); setInterval(() => {}, 1000); })`,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    const exited = new Promise((resolve) => holder.once("exit", resolve));
    try {
      for await (const line of createInterface({ input: holder.stdout }))
        if (line === "held") break;
      await expect(lockService("broker", dir)).rejects.toThrow(new RegExp(`pid ${holder.pid}`));
    } finally {
      holder.kill("SIGKILL");
      await exited;
    }
    await (await lockService("broker", dir)).release();
  });
});
