import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { TaskSchema, TaskState, type Task } from "../../../gen/conductor/v1/task_pb.js";
import { filterOf, listRequest, matches, upsert } from "./task-filter.ts";

const task = (id: string, ms: number, state = TaskState.QUEUED, labels = {}, groupId = ""): Task =>
  create(TaskSchema, { id, state, createTime: timestampFromMs(ms), spec: { labels }, groupId });

describe("the queue view's filter", () => {
  it("reads state, labels and group from the address", () => {
    const f = filterOf({ state: "RUNNING", label: "team=web, env=dev", group: "g1" });
    expect(f.states).toEqual([TaskState.RUNNING]);
    expect(f.labels).toEqual({ team: "web", env: "dev" });
    expect(listRequest(f, "p2")).toMatchObject({ groupId: "g1", pageToken: "p2" });
    expect(filterOf({ state: "active" }).states).toEqual([
      TaskState.QUEUED,
      TaskState.SCHEDULED,
      TaskState.RUNNING,
    ]);
    expect(filterOf({}).states).toEqual([]);
    expect(filterOf({ label: "oops" }).problem).toBe('label "oops" is not key=value');
    // A value may hold spaces (and markup: it is text); labels are separated by commas.
    expect(filterOf({ label: "svc=<i class=x>a b</i>, team=web" }).labels).toEqual({
      svc: "<i class=x>a b</i>",
      team: "web",
    });
  });

  it("matches tasks by every part", () => {
    const f = filterOf({ state: "QUEUED", label: "team=web", group: "g" });
    expect(matches(f, task("a", 1, TaskState.QUEUED, { team: "web" }, "g"))).toBe(true);
    expect(matches(f, task("a", 1, TaskState.RUNNING, { team: "web" }, "g"))).toBe(false);
    expect(matches(f, task("a", 1, TaskState.QUEUED, { team: "ops" }, "g"))).toBe(false);
    expect(matches(f, task("a", 1, TaskState.QUEUED, { team: "web" }, "h"))).toBe(false);
  });

  it("keeps rows newest first as tasks change", () => {
    const any = filterOf({});
    let rows = [task("c", 30), task("a", 10)];
    rows = upsert(rows, task("b", 20), any, false);
    expect(rows.map((r) => r.id)).toEqual(["c", "b", "a"]);
    rows = upsert(rows, task("d", 40), any, false);
    expect(rows.map((r) => r.id)).toEqual(["d", "c", "b", "a"]);
    rows = upsert(rows, task("b", 20, TaskState.RUNNING), any, false);
    expect(rows[2]!.state).toBe(TaskState.RUNNING);
    // Older than every row while more pages remain: it comes with them.
    expect(upsert(rows, task("z", 1), any, true)).toBe(rows);
    expect(upsert(rows, task("z", 1), any, false).at(-1)!.id).toBe("z");
    // A row that no longer passes the filter leaves.
    const queued = filterOf({ state: "QUEUED" });
    expect(upsert(rows, task("c", 30, TaskState.RUNNING), queued, false).map((r) => r.id)).toEqual([
      "d",
      "b",
      "a",
    ]);
  });
});
