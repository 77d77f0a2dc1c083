import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FileStatus, TaskState, type Task } from "../../gen/conductor/v1/task_pb.js";
import { scripted, spec, testRuntimes, waitForEnd } from "../harness.ts";
import { cacheOf, conductor, fingerprint, git, makeRepository } from "../repositories.ts";
import { useConductor } from "./use-conductor.ts";

const STATUS = (t: Task) =>
  Object.fromEntries(
    (t.result?.change?.files ?? []).map((f) => [
      f.path,
      f.oldPath ? `${FileStatus[f.status]} from ${f.oldPath}` : FileStatus[f.status],
    ]),
  );

describe.each(testRuntimes())("tasks on a git repository, on the %s runtime", (runtime) => {
  const setup = useConductor(() => ({ agents: 4, runtime }));
  const repo = () => {
    const dir = path.join(setup.conductor.dir, "src", "app");
    if (!existsSync(dir)) makeRepository(dir);
    return dir;
  };

  it(
    "commits an edit, an addition, a deletion and a rename on the task's branch; diff shows it, apply reproduces it, the source is untouched",
    { timeout: 120_000 },
    async () => {
      const { client, dir, socketDir, dataDir } = setup.conductor;
      const base = git(repo(), "rev-parse", "HEAD").trim();
      const before = fingerprint(repo());
      const { task } = await client.submitTask({
        spec: spec({
          prompt: scripted([
            { write: { path: "a.txt", content: "edited a\n" } },
            { write: { path: "new.txt", content: "a new file\n" } },
            { bash: "rm gone.txt && mv old.txt renamed.txt && echo noise > debug.log" },
            { text: "changed four files" },
          ]),
          allowedTools: ["Write", "Bash"],
          workspace: { kind: { case: "git", value: { repository: repo() } } },
        }),
      });
      const done = await waitForEnd(client, task!.id, 90_000);
      expect(done.state, done.result?.error).toBe(TaskState.SUCCEEDED);
      const change = done.result!.change!;
      expect(change).toMatchObject({
        baseCommit: base,
        branch: `conductor/${task!.id}`,
        committed: true,
        partial: false,
        filesTotal: 4,
      });
      expect(STATUS(done)).toEqual({
        "a.txt": "MODIFIED",
        "new.txt": "ADDED",
        "gone.txt": "DELETED",
        "renamed.txt": "RENAMED from old.txt",
      });
      // The commit names the task, its attempt and agent and session.
      const cache = cacheOf(dataDir, repo());
      const message = git(cache, "log", "-1", "--format=%an <%ae>%n%B", change.headCommit);
      expect(message).toContain("Conductor <conductor@localhost>");
      expect(message).toContain(`Conductor-Task: ${task!.id}`);
      expect(message).toContain(`Claude-Session: ${done.result!.sessionId}`);
      expect(git(cache, "rev-parse", change.headCommit + "^")).toBe(`${base}\n`);

      const diff = await conductor(
        ["diff", task!.id, "--socket", path.join(socketDir, "orchestrator.sock")],
        dir,
      );
      expect(diff.code, diff.stderr).toBe(0);
      expect(diff.stdout).toContain("+edited a");
      expect(diff.stdout).toContain("rename from old.txt");
      expect(diff.stdout).toContain("deleted file mode");
      expect(diff.stdout).not.toContain("debug.log");

      const clone = path.join(dir, "clone");
      git(dir, "clone", "-q", repo(), clone);
      git(clone, "config", "user.name", "Someone");
      git(clone, "config", "user.email", "someone@example.com");
      // Run from elsewhere, as from Conductor's folder: -C names the repository.
      const applied = await conductor(
        ["apply", task!.id, "-C", clone, "--socket", path.join(socketDir, "orchestrator.sock")],
        dir,
      );
      expect(applied.code, applied.stderr).toBe(0);
      expect(applied.stdout).toMatch(/applied 1 commit/);
      expect(git(clone, "rev-parse", "HEAD^{tree}")).toBe(
        git(cache, "rev-parse", `${change.headCommit}^{tree}`),
      );
      expect(readFileSync(path.join(clone, "a.txt"), "utf8")).toBe("edited a\n");
      expect(existsSync(path.join(clone, "old.txt"))).toBe(false);

      // The source repository: every ref, object and file as it was.
      expect(fingerprint(repo())).toBe(before);
    },
  );

  it(
    "runs ten tasks of one repository at once on 4 agents: ten branches, none sees another's files",
    { timeout: 240_000 },
    async () => {
      const { client, dataDir } = setup.conductor;
      const submitted = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          client.submitTask({
            spec: spec({
              prompt: scripted([
                { write: { path: `own-${i}.txt`, content: `task ${i}\n` } },
                { bash: `ls -A > seen-${i}.lst` },
                { text: `task ${i} done` },
              ]),
              allowedTools: ["Write", "Bash"],
              workspace: { kind: { case: "git", value: { repository: repo() } } },
            }),
          }),
        ),
      );
      const tasks = await Promise.all(
        submitted.map((s) => waitForEnd(client, s.task!.id, 200_000)),
      );
      const cache = cacheOf(dataDir, repo());
      const branches = new Set<string>();
      tasks.forEach((t, i) => {
        expect(t.state, t.result?.error).toBe(TaskState.SUCCEEDED);
        expect(t.attempts).toBe(1);
        const change = t.result!.change!;
        branches.add(change.branch);
        const seen = git(cache, "show", `${change.headCommit}:seen-${i}.lst`).split("\n");
        expect(seen.filter((f) => f.startsWith("own-"))).toEqual([`own-${i}.txt`]);
        expect(STATUS(t)).toEqual({ [`own-${i}.txt`]: "ADDED", [`seen-${i}.lst`]: "ADDED" });
      });
      expect(branches.size).toBe(10);
    },
  );
});
