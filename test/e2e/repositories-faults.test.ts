import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, describe, expect, it } from "vitest";
import { ErrorKind, TaskState, type Task } from "../../gen/conductor/v1/task_pb.js";
import { grpcJsClient } from "../grpc-js-clients.ts";
import { freePort, startDaemon } from "../../services/agent-host/workspace/test-repos.ts";
import { bufCurl } from "../buf-curl.ts";
import { failureOf } from "../rpc-errors.ts";
import { scripted, spec, testRuntimes, waitForEnd } from "../harness.ts";
import { cacheOf, fingerprint, git, makeRepository } from "../repositories.ts";
import type * as grpc from "@grpc/grpc-js";
import { useConductor } from "./use-conductor.ts";

/** Submits; the gRPC code and message it is refused with. */
const refusal = (
  client: ReturnType<typeof useConductor>["conductor"]["client"],
  fields: Parameters<typeof spec>[0],
) => failureOf(client.submitTask({ spec: spec(fields) }));

const gitWorkspace = (
  repository: string,
  more: { ref?: string; branch?: string; push?: boolean } = {},
) => ({ kind: { case: "git", value: { repository, ...more } } }) as const;

describe.each(testRuntimes())("repository tasks across faults on the %s runtime", (runtime) => {
  const allowed = { dir: "" };
  const setup = useConductor(() => {
    allowed.dir = mkdtempSync(path.join(tmpdir(), "conductor-allowed-"));
    return {
      agents: 2,
      runtime,
      env: {
        CONDUCTOR_ORCHESTRATOR_RETRY_BACKOFF_SECONDS: "5",
        CONDUCTOR_AGENT_ALLOWED_HOST_PATHS: JSON.stringify([allowed.dir]),
      },
    };
  });
  afterAll(() => rmSync(allowed.dir, { recursive: true, force: true }));

  /** A task on the repository at `repo` whose agent runs `bash`, to its end. */
  const bashTask = async (repo: string, bash: string, more: { maxAttempts?: number } = {}) => {
    const { client } = setup.conductor;
    const { task } = await client.submitTask({
      spec: spec({
        prompt: scripted([{ bash }, { text: "done" }]),
        allowedTools: ["Bash"],
        workspace: gitWorkspace(repo),
        ...more,
      }),
    });
    return waitForEnd(client, task!.id, 90_000);
  };
  /** `n` tasks on `repo` at once, each a few seconds long (every agent takes one), to their end. */
  const busyAll = (repo: string, n: number) =>
    Promise.all(Array.from({ length: n }, () => bashTask(repo, "sleep 2", { maxAttempts: 1 })));

  it(
    "a failing check fails attempt 1; attempt 2 resumes its session on the other agent and its CLI dies; attempt 3 resumes the same session, fixes it and succeeds",
    { timeout: 180_000 },
    async () => {
      const { client, dir } = setup.conductor;
      const repo = path.join(dir, "src", "checked");
      makeRepository(repo);
      const check = "grep -qx good value.txt";
      const { task } = await client.submitTask({
        spec: spec({
          prompt: scripted([
            { write: { path: "value.txt", content: "bad\n" } },
            { text: "wrote the value" },
            // Attempt 2, resumed, told what failed: its CLI is killed, with no result line.
            { bash: "test -e died || { touch died; kill -9 $PPID; }" },
            // Attempt 3 goes on from the same transcript (where the script stands after a
            // killed tool call is the CLI's to say: either of the next two steps starts it).
            { write: { path: "value.txt", content: "good\n" } },
            { write: { path: "value.txt", content: "good\n" } },
            { text: "fixed the value" },
            { text: "fixed the value" },
          ]),
          maxAttempts: 3,
          allowedTools: ["Bash"],
          workspace: gitWorkspace(repo),
          checks: [{ command: check }],
        }),
      });
      const done = await waitForEnd(client, task!.id, 150_000);
      expect(done.state, done.result?.error).toBe(TaskState.SUCCEEDED);
      expect(done.attempts).toBe(3);
      expect(done.result!.text).toBe("fixed the value");
      expect(
        done.result!.checks.map((c) => ({ a: c.attempt, passed: c.passed, exit: c.exitCode })),
      ).toEqual([
        { a: 1, passed: false, exit: 1 },
        { a: 3, passed: true, exit: 0 },
      ]);
      // Attempt 2 ran on the other agent, in the first attempt's session; attempt 3 in it too.
      const runs: { agent: string; session?: string }[] = [];
      for await (const { event } of client.watchTask({ id: task!.id })) {
        const k = event!.kind;
        if (k.case === "stateChange" && k.value.state === TaskState.RUNNING)
          runs.push({ agent: k.value.agentId });
        if (k.case === "output" && k.value.type === "system" && runs.length > 0) {
          const line = JSON.parse(k.value.rawJson) as { subtype?: string; session_id?: string };
          if (line.subtype === "init") runs.at(-1)!.session = line.session_id;
        }
      }
      expect(runs).toHaveLength(3);
      expect(runs[1]!.agent).not.toBe(runs[0]!.agent);
      expect(runs.map((r) => r.session)).toEqual(Array(3).fill(runs[0]!.session));
      expect(done.result!.sessionId).toBe(runs[0]!.session);
      const told = setup.model.requests.filter((r) =>
        JSON.stringify(r.body).includes(`check \`${check}\` failed (exit 1)`),
      );
      expect(told.length, "the resumed sessions were told what failed").toBeGreaterThan(0);
      // Attempt 3's requests carry attempt 1's conversation, and attempt 2's killed call.
      const last = JSON.stringify(told.at(-1)!.body);
      expect(last).toContain("wrote the value");
      expect(last).toContain("touch died");
      // The task is over: no agent keeps its conversation any more.
      const agentsDir = path.join(setup.conductor.dataDir, "agents");
      const kept = readdirSync(agentsDir).flatMap((a) => {
        const store = path.join(agentsDir, a, "sessions");
        return existsSync(store) ? readdirSync(store) : [];
      });
      expect(kept).not.toContain(`${task!.id}.jsonl`);
      // Each attempt's work is on the branch: the bad value, the killed run's file, the fix.
      const cache = cacheOf(setup.conductor.dataDir, repo);
      const change = done.result!.change!;
      expect(git(cache, "show", `${change.headCommit}:value.txt`)).toBe("good\n");
      expect(git(cache, "rev-list", "--count", `${change.baseCommit}..${change.headCommit}`)).toBe(
        "3\n",
      );
    },
  );

  it(
    "kill -9 mid-run: the partial work is committed and pushed at restart, the retry starts from it, and the pushed branch is one",
    { timeout: 150_000 },
    async () => {
      const { client, dir, dataDir } = setup.conductor;
      const served = path.join(dir, "served");
      mkdirSync(served, { recursive: true });
      makeRepository(path.join(dir, "src", "pushed"));
      git(
        dir,
        "clone",
        "-q",
        "--bare",
        path.join(dir, "src", "pushed"),
        path.join(served, "app.git"),
      );
      await using d = await startDaemon(served);
      const submitted = Date.now();
      const { task } = await client.submitTask({
        spec: spec({
          prompt: scripted([
            { bash: "cat partial.txt > seen-at-start.txt 2>&1; true" },
            { write: { path: "partial.txt", content: "partial work\n" } },
            { hang: true },
          ]),
          allowedTools: ["Write", "Bash"],
          maxAttempts: 2,
          workspace: gitWorkspace(`${d.url}/app.git`, { push: true }),
        }),
      });
      // This suite's model served other tasks before: wait for this one's hang.
      await setup.model.waitFor(
        (r) => r.kind === "main" && r.step === 2 && r.receivedAt >= submitted,
      );
      await setup.conductor.processes[0]!.kill9();
      const restarted = Date.now();
      await setup.conductor.restart();

      // At restart, before the retry (5 s of backoff): the work is on the branch, pushed,
      // and no worktree is left.
      const cache = cacheOf(dataDir, `${d.url}/app.git`);
      const branch = `conductor/${task!.id}`;
      expect(git(cache, "show", `${branch}:partial.txt`)).toBe("partial work\n");
      expect(git(cache, "log", "-1", "--format=%B", branch)).toMatch(/recovered after a restart/);
      expect(git(cache, "worktree", "list", "--porcelain").match(/^worktree /gm)).toHaveLength(1);
      const remote = path.join(served, "app.git");
      expect(git(remote, "rev-parse", branch)).toBe(git(cache, "rev-parse", branch));

      // The retry starts from the partial work, then hangs again: cancel it.
      await setup.model.waitFor(
        (r) => r.kind === "main" && r.step === 2 && r.receivedAt > restarted,
      );
      await client.cancelTask({ id: task!.id });
      const done = await waitForEnd(client, task!.id);
      expect(done.state).toBe(TaskState.CANCELLED);
      expect(done.attempts).toBe(2);
      const change = done.result!.change!;
      expect(change.partial).toBe(true);
      expect(change.pushed).toBe(true);
      expect(git(cache, "show", `${change.headCommit}:seen-at-start.txt`)).toBe("partial work\n");
      // One branch on the remote, at the final head, its history base → partial → retry.
      expect(git(remote, "for-each-ref", "--format=%(refname)", "refs/heads/conductor/")).toBe(
        `refs/heads/${branch}\n`,
      );
      expect(git(remote, "rev-parse", branch).trim()).toBe(change.headCommit);
      expect(git(remote, "rev-list", "--count", `${change.baseCommit}..${branch}`)).toBe("2\n");
    },
  );

  it(
    "saves the work of a task that left a tree deeper than PATH_MAX and a closed folder, removes its worktree, and the agents take the next",
    { timeout: 120_000 },
    async () => {
      const { dir, dataDir } = setup.conductor;
      const repo = path.join(dir, "src", "deep");
      makeRepository(repo);
      // 30 folders of 200-character names: 6,030 bytes of path, past PATH_MAX (4,096).
      const deep =
        "n=$(printf 'd%.0s' $(seq 200)); (for i in $(seq 30); do mkdir $n && cd $n || exit 1; done; echo bottom > f.txt) &&" +
        " mkdir closed && echo in > closed/x && chmod 000 closed && echo top > top.txt";
      const done = await bashTask(repo, deep);
      expect(done.state, done.result?.error).toBe(TaskState.SUCCEEDED);
      const cache = cacheOf(dataDir, repo);
      const change = done.result!.change!;
      expect(git(cache, "show", `${change.headCommit}:top.txt`)).toBe("top\n");
      // What git could not commit (past PATH_MAX; the closed folder too, where this service is
      // not root) is named in the change, not lost without a word.
      expect(change.notCommittedTotal).toBeGreaterThanOrEqual(1);
      expect(change.notCommitted[0]).toMatch(/^d{200}\/d{200}\//);
      // Nothing of its worktree is left, on disk or in git's list.
      const places = [
        path.join(dataDir, "worktrees"),
        ...readdirSync(path.join(dataDir, "agents")).map((a) =>
          path.join(dataDir, "agents", a, "task"),
        ),
      ];
      for (const place of places)
        expect(existsSync(place) ? readdirSync(place) : [], place).not.toContain(done.id);
      expect(git(cache, "worktree", "list", "--porcelain").match(/^worktree /gm)).toHaveLength(1);
      // Both agents take repository tasks again (a container agent refuses one while its task
      // folder holds another task's worktree).
      for (const t of await busyAll(repo, 2))
        expect(t.state, t.result?.error).toBe(TaskState.SUCCEEDED);
    },
  );

  it(
    "keeps a worktree whose work git can never save out of every sandbox; the task's retry and its agent's next task go on",
    { timeout: 150_000 },
    async () => {
      const { dir, dataDir } = setup.conductor;
      const repo = path.join(dir, "src", "unsavable");
      makeRepository(repo);
      // Bytes that do not decode from the encoding the agent's .gitattributes names: `git add`
      // fails whole (not a path it skips), at the attempt's end and at every try after.
      const hostile =
        "printf '*.u16 working-tree-encoding=UTF-16\\n' > .gitattributes; printf '\\377\\376\\330' > bad.u16; echo precious > precious.txt";
      const done = await bashTask(repo, hostile, { maxAttempts: 2 });
      expect(done.state).toBe(TaskState.FAILED);
      // The retry ran (its worktree prepared: the first set aside), and failed as the first did.
      expect(done.attempts).toBe(2);
      expect(done.result?.error).toMatch(
        /the work could not be saved on branch .*failed to encode/,
      );
      // The task's doing, not its agent's: no rest for the agent (as INFRASTRUCTURE would).
      expect(done.result?.errorKind).toBe(ErrorKind.WORK_NOT_SAVED);
      // Three tasks at once: the hostile task's agent takes one.
      const next = await busyAll(repo, 3);
      for (const t of next) expect(t.state, t.result?.error).toBe(TaskState.SUCCEEDED);
      expect(next.map((t) => t.agentId)).toContain(done.agentId);
      // The work of both attempts is kept whole, where no sandbox sees it (a container agent's
      // task folder is in its sandbox; the process runtime's worktrees are not).
      const kept = execFileSync("find", [dataDir, "-name", "precious.txt"], { encoding: "utf8" });
      const places = kept.trim().split("\n").sort();
      expect(places).toHaveLength(2);
      expect(places[0]).toContain(`/unsaved/${done.id}-`);
      expect(places[1]).toContain(
        runtime === "process" ? `/worktrees/${done.id}/` : `/unsaved/${done.id}-`,
      );
    },
  );

  it(
    "host_path: a folder under agent.allowed_host_paths only, and only where the runtime can bind it per run",
    { timeout: 60_000 },
    async () => {
      const { client, dir } = setup.conductor;
      const outside = path.join(dir, "outside");
      mkdirSync(outside, { recursive: true });
      const refused = await refusal(client, {
        prompt: "review",
        workspace: { kind: { case: "hostPath", value: { path: outside } } },
      });
      expect(refused.code).toBe(Code.FailedPrecondition);
      expect(refused.message).toMatch(/is not under agent\.allowed_host_paths/);
      const inside = { kind: { case: "hostPath", value: { path: allowed.dir } } } as const;
      if (runtime === "process") {
        const { task } = await client.submitTask({
          spec: spec({ prompt: "look", workspace: inside }),
        });
        expect((await waitForEnd(client, task!.id)).state).toBe(TaskState.SUCCEEDED);
      } else {
        const e = await refusal(client, { prompt: "look", workspace: inside });
        expect(e.code).toBe(Code.FailedPrecondition);
        expect(e.message).toMatch(/need a runtime that binds a folder per run/);
      }
    },
  );
});

describe("repository tasks: host folders, big patches and bad input (process runtime)", () => {
  const allowedRoot = { dir: "" };
  const setup = useConductor(() => {
    allowedRoot.dir = mkdtempSync(path.join(tmpdir(), "conductor-allowed-"));
    return {
      agents: 2,
      runtime: "process",
      env: {
        CONDUCTOR_AGENT_ALLOWED_HOST_PATHS: JSON.stringify([allowedRoot.dir]),
        CONDUCTOR_AGENT_MAX_COMMIT_FILE_BYTES: String(40 * 1024 ** 2),
        CONDUCTOR_AGENT_MAX_CHANGE_BYTES: String(100 * 1024 ** 2),
      },
    };
  });
  afterAll(() => rmSync(allowedRoot.dir, { recursive: true, force: true }));

  it(
    "leaves out of a commit a file over agent.max_commit_file_bytes and the largest while over agent.max_change_bytes, naming them",
    { timeout: 90_000 },
    async () => {
      const { client, dir, dataDir } = setup.conductor;
      const repo = path.join(dir, "src", "bounded");
      makeRepository(repo);
      // Sparse files: their size counts, not the disk they take. 50 MiB is over the file bound;
      // 30 + 31 + 32 + 33 MiB are over the change's 100 MiB until the 33 MiB one is left out.
      const bash =
        "truncate -s 50M huge.bin; for n in 30 31 32 33; do truncate -s ${n}M $n.bin; done; echo kept > small.txt";
      const { task } = await client.submitTask({
        spec: spec({
          prompt: scripted([{ bash }, { text: "done" }]),
          allowedTools: ["Bash"],
          workspace: gitWorkspace(repo),
        }),
      });
      const done = await waitForEnd(client, task!.id, 60_000);
      expect(done.state, done.result?.error).toBe(TaskState.SUCCEEDED);
      const change = done.result!.change!;
      expect(change.notCommitted).toEqual(["huge.bin", "33.bin"]);
      expect(change.notCommittedTotal).toBe(2);
      const committed = git(cacheOf(dataDir, repo), "ls-tree", "--name-only", change.headCommit);
      expect(committed.split("\n")).toEqual(
        expect.arrayContaining(["30.bin", "31.bin", "32.bin", "small.txt"]),
      );
      expect(committed).not.toMatch(/huge\.bin|33\.bin/);
    },
  );

  it(
    "works in an allowed host folder as it is, read-write or read-only",
    { timeout: 60_000 },
    async () => {
      const { client } = setup.conductor;
      const folder = path.join(allowedRoot.dir, "copy");
      mkdirSync(folder, { recursive: true });
      // The agent works as its own user: the folder must let it write (as the README says).
      chmodSync(folder, 0o777);
      writeFileSync(path.join(folder, "README"), "as it is\n");
      const write = scripted([
        { bash: "cat README > seen.txt; echo written > review.txt" },
        { text: "done" },
      ]);
      const rw = await client.submitTask({
        spec: spec({
          prompt: write,
          allowedTools: ["Bash"],
          workspace: { kind: { case: "hostPath", value: { path: folder } } },
        }),
      });
      const rwDone = await waitForEnd(client, rw.task!.id);
      expect(rwDone.state, rwDone.result?.error).toBe(TaskState.SUCCEEDED);
      expect(readFileSync(path.join(folder, "seen.txt"), "utf8")).toBe("as it is\n");
      expect(rwDone.result?.change).toBeUndefined();

      const ro = await client.submitTask({
        spec: spec({
          prompt: scripted([{ bash: "echo x > ro.txt" }, { text: "{{last_tool_result}}" }]),
          allowedTools: ["Bash"],
          workspace: { kind: { case: "hostPath", value: { path: folder, readOnly: true } } },
        }),
      });
      const roDone = await waitForEnd(client, ro.task!.id);
      expect(roDone.state, roDone.result?.error).toBe(TaskState.SUCCEEDED);
      expect(roDone.result!.text).toMatch(/Read-only file system/);
      expect(existsSync(path.join(folder, "ro.txt"))).toBe(false);
    },
  );

  it(
    "streams a 50 MB patch whole through GetTaskPatch to grpc-js and buf curl",
    { timeout: 180_000 },
    async () => {
      const { client, dir, socketDir, dataDir } = setup.conductor;
      const repo = path.join(dir, "src", "big");
      makeRepository(repo);
      const { task } = await client.submitTask({
        spec: spec({
          prompt: scripted([
            { bash: "head -c 37500000 /dev/zero | tr '\\0' 'x' | fold -w 100 > big.txt" },
            { text: "wrote 50 MB" },
          ]),
          allowedTools: ["Bash"],
          workspace: gitWorkspace(repo),
        }),
      });
      const done = await waitForEnd(client, task!.id, 150_000);
      expect(done.state, done.result?.error).toBe(TaskState.SUCCEEDED);
      const change = done.result!.change!;
      const expected = await new Promise<{ bytes: number; sha: string }>((resolve, reject) => {
        const h = createHash("sha256");
        let bytes = 0;
        const p = spawn(
          "git",
          [
            "format-patch",
            "--stdout",
            "--binary",
            "-M",
            `${change.baseCommit}..${change.headCommit}`,
          ],
          { cwd: cacheOf(dataDir, repo) },
        );
        p.stdout.on("data", (b: Buffer) => {
          bytes += b.length;
          h.update(b);
        });
        p.once("error", reject);
        p.once("close", () => resolve({ bytes, sha: h.digest("hex") }));
      });
      expect(expected.bytes).toBeGreaterThan(37_500_000);

      const socket = path.join(socketDir, "orchestrator.sock");
      const js = grpcJsClient<
        grpc.Client & {
          GetTaskPatch(req: { taskId: string }): grpc.ClientReadableStream<{ chunk: Buffer }>;
        }
      >("conductor/v1/orchestrator.proto", "OrchestratorService", socket);
      const got = await new Promise<{ bytes: number; sha: string; biggest: number }>(
        (resolve, reject) => {
          const h = createHash("sha256");
          let bytes = 0;
          let biggest = 0;
          const stream = js.GetTaskPatch({ taskId: task!.id });
          stream.on("data", (m: { chunk: Buffer }) => {
            bytes += m.chunk.length;
            biggest = Math.max(biggest, m.chunk.length);
            h.update(m.chunk);
          });
          stream.once("error", reject);
          stream.once("end", () => resolve({ bytes, sha: h.digest("hex"), biggest }));
        },
      );
      js.close();
      expect({ bytes: got.bytes, sha: got.sha }).toEqual(expected);
      expect(got.biggest).toBeLessThanOrEqual(1024 * 1024);

      // buf curl, by reflection: each message one JSON object with a base64 chunk.
      const out = await bufCurl(
        socket,
        "/conductor.v1.OrchestratorService/GetTaskPatch",
        { taskId: task!.id },
        512 * 1024 * 1024,
      );
      const h = createHash("sha256");
      let bytes = 0;
      for (const m of out.matchAll(/"chunk":\s*"([^"]*)"/g)) {
        const b = Buffer.from(m[1]!, "base64");
        bytes += b.length;
        h.update(b);
      }
      expect({ bytes, sha: h.digest("hex") }).toEqual(expected);
    },
  );

  it(
    "refuses bad workspaces at submit with a code and a message, and leaves the source as it was",
    { timeout: 60_000 },
    async () => {
      const { client, dir, dataDir } = setup.conductor;
      const repo = path.join(dir, "src", "untouched");
      makeRepository(repo);
      const plain = path.join(dir, "plain");
      mkdirSync(plain, { recursive: true });
      const before = fingerprint(repo);
      const closed = await freePort();
      const cases: [Parameters<typeof spec>[0]["workspace"], Code, RegExp][] = [
        [gitWorkspace(path.join(dir, "no-such-repo")), Code.FailedPrecondition, /no-such-repo/],
        [gitWorkspace(plain), Code.FailedPrecondition, /not a git repository/],
        [gitWorkspace(repo, { ref: "no-such-branch" }), Code.FailedPrecondition, /no-such-branch/],
        [gitWorkspace(repo, { branch: "bad..name" }), Code.InvalidArgument, /bad\.\.name/],
        [gitWorkspace(repo, { branch: "topic/.hidden" }), Code.InvalidArgument, /topic\/\.hidden/],
        [
          gitWorkspace(`git://127.0.0.1:${closed}/app.git`),
          Code.FailedPrecondition,
          /127\.0\.0\.1/,
        ],
        [gitWorkspace("ext::sh -c touch% /tmp/pwned"), Code.InvalidArgument, /ext::/],
        [gitWorkspace("relative/path"), Code.InvalidArgument, /absolute path/],
        // Conductor's own clones (every task's results) are no task's repository.
        [gitWorkspace(path.join(dataDir, "repos")), Code.InvalidArgument, /Conductor's own folder/],
        [gitWorkspace(`file://${dataDir}/repos`), Code.InvalidArgument, /Conductor's own folder/],
        [
          { kind: { case: "hostPath", value: { path: plain } } },
          Code.FailedPrecondition,
          /allowed_host_paths/,
        ],
        // A folder holding Conductor's data (its clones, stores, secrets) is never bound in.
        [
          { kind: { case: "hostPath", value: { path: dir } } },
          Code.InvalidArgument,
          /Conductor's own folder/,
        ],
      ];
      for (const [workspace, code, message] of cases) {
        const e = await refusal(client, { prompt: "work", workspace });
        expect({ code: Code[e.code], message: e.message }).toMatchObject({ code: Code[code] });
        expect(e.message).toMatch(message);
      }
      expect(fingerprint(repo)).toBe(before);
      // A patch of no task at all.
      const noId = await (async () => {
        try {
          for await (const _ of client.getTaskPatch({ taskId: "" })) break;
        } catch (e) {
          return ConnectError.from(e);
        }
        return undefined;
      })();
      expect(noId?.code).toBe(Code.InvalidArgument);
      const { tasks } = await client.listTasks({});
      expect(tasks.filter((t: Task) => t.spec?.prompt === "work")).toEqual([]);
    },
  );
});
