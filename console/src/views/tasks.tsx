// The queue and recent tasks: a page of ListTasks, kept live by WatchTasks (reopened with
// backoff when it breaks, listing again each time so nothing missed stays stale).
import { useLocation } from "preact-iso";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import type { Task } from "../../../gen/conductor/v1/task_pb.js";
import type { Orchestrator } from "../api.ts";
import { useApi, useNow } from "../context.ts";
import { errorText } from "../errors.ts";
import { follow } from "../follow.ts";
import { ALL_STATES, age, nodeOf, runTime, stateName, usd } from "../format.ts";
import { useAgents } from "./agents-map.ts";
import { SubmitForm } from "./submit.tsx";
import { filterOf, listRequest, upsert, type TaskFilter } from "./task-filter.ts";

/** The tasks view (`/`, `/tasks`), filtered by the address's query. */
export function TasksView() {
  const api = useApi();
  const { query, route } = useLocation();
  const filterKey = JSON.stringify([query["state"], query["label"], query["group"]]);
  const filter = useMemo(() => filterOf(query), [filterKey]);
  const [rows, setRows] = useState<Task[]>([]);
  const [next, setNext] = useState("");
  const [status, setStatus] = useState("connecting");
  const [error, setError] = useState<string>();
  const nextRef = useRef("");
  nextRef.current = next;
  const agents = useAgents();
  const now = useNow();

  useEffect(() => {
    const stop = new AbortController();
    follow(
      (signal) => listThenWatch(api, filter, signal),
      {
        message: (u) => {
          if ("page" in u) {
            setRows(u.page);
            setNext(u.next);
            setStatus("live");
            setError(undefined);
          } else {
            setRows((rows) => upsert(rows, u, filter, nextRef.current !== ""));
          }
        },
        broken: (e, ms) => {
          setStatus(`reconnecting in ${(ms / 1000).toFixed(1)} s`);
          setError(errorText(e));
        },
      },
      stop.signal,
    ).catch(() => undefined);
    return () => stop.abort();
  }, [api, filter]);

  async function more() {
    try {
      const page = await api.listTasks(listRequest(filter, next));
      setRows((rows) => [...rows, ...page.tasks.filter((t) => !rows.some((r) => r.id === t.id))]);
      setNext(page.nextPageToken);
    } catch (e) {
      setError(errorText(e));
    }
  }

  return (
    <section>
      <details class="panel" open>
        <summary>New task</summary>
        <SubmitForm
          onSubmitted={(t) =>
            // The live stream may have brought a newer state already: it wins.
            setRows((rows) =>
              rows.some((r) => r.id === t.id) ? rows : upsert(rows, t, filter, false),
            )
          }
        />
      </details>
      <Filters filter={filter} apply={(q) => route(`/${q ? `?${q}` : ""}`)} />
      <p class="status">
        <span data-testid="live-status">{status}</span>
        {error && (
          <span class="error" role="alert">
            {" "}
            {error}
          </span>
        )}
      </p>
      <table class="tasks" data-testid="tasks">
        <thead>
          <tr>
            <th>Task</th>
            <th>State</th>
            <th>Priority</th>
            <th>Type</th>
            <th>Agent</th>
            <th>Node</th>
            <th>Age</th>
            <th>Duration</th>
            <th>Cost</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((t) => (
            <tr key={t.id} data-task={t.id} data-state={stateName(t.state)}>
              <td>
                <a href={`/tasks/${encodeURIComponent(t.id)}`}>{t.id}</a>
                <div class="prompt">{t.spec?.prompt.slice(0, 120)}</div>
              </td>
              <td>
                <span class={`state ${stateName(t.state)}`}>{stateName(t.state)}</span>
              </td>
              <td>{t.spec?.priority ?? 0}</td>
              <td>{t.spec?.type || "generic"}</td>
              <td>{t.agentId || "-"}</td>
              <td>{nodeOf(t.agentId, agents)}</td>
              <td>{age(t.createTime, now)}</td>
              <td>{runTime(t, now)}</td>
              <td>{t.result ? usd(t.result.costUsd) : "-"}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {rows.length === 0 && status === "live" && (
        <p class="note">
          No tasks
          {filter.states.length || filter.group || Object.keys(filter.labels).length
            ? " match this filter"
            : " yet"}
          .
        </p>
      )}
      {next && (
        <button type="button" onClick={() => void more().catch(() => undefined)}>
          More
        </button>
      )}
    </section>
  );
}

/** What listThenWatch yields: a whole first page, or one task that changed. */
type Update = { page: Task[]; next: string } | Task;

/**
 * Opens WatchTasks, and once its first (empty) message says it is open, lists the filter's
 * first page and yields it, then each task WatchTasks reports: no change is missed between
 * the list and the stream (a change during the list is read after it, and is newer). The
 * stream is closed when the generator ends.
 */
async function* listThenWatch(
  api: Orchestrator,
  filter: TaskFilter,
  outer: AbortSignal,
): AsyncGenerator<Update> {
  const mine = new AbortController();
  const signal = AbortSignal.any([outer, mine.signal]);
  try {
    const stream = api.watchTasks({}, { signal })[Symbol.asyncIterator]();
    const opened = await stream.next();
    if (opened.done) return;
    const page = await api.listTasks(listRequest(filter), { signal });
    yield { page: page.tasks, next: page.nextPageToken };
    for (;;) {
      const got = await stream.next();
      if (got.done) return;
      if (got.value.task) yield got.value.task;
    }
  } finally {
    mine.abort();
  }
}

/** The filter bar: state, label (k=v) and group. */
function Filters({ filter, apply }: { filter: TaskFilter; apply: (query: string) => void }) {
  const [state, setState] = useState(filter.state);
  const [label, setLabel] = useState(
    Object.entries(filter.labels)
      .map(([k, v]) => `${k}=${v}`)
      .join(", "),
  );
  const [group, setGroup] = useState(filter.group);
  useEffect(() => setGroup(filter.group), [filter.group]);
  function submit(e: Event) {
    e.preventDefault();
    const q = new URLSearchParams();
    if (state) q.set("state", state);
    if (label.trim()) q.set("label", label.trim());
    if (group.trim()) q.set("group", group.trim());
    apply(q.toString());
  }
  return (
    <form class="filters" onSubmit={submit} data-testid="filters">
      <label>
        State
        <select name="state" value={state} onChange={(e) => setState(e.currentTarget.value)}>
          <option value="">any</option>
          <option value="active">active (not ended)</option>
          {ALL_STATES.map((s) => (
            <option key={s} value={stateName(s)}>
              {stateName(s)}
            </option>
          ))}
        </select>
      </label>
      <label>
        Label
        <input
          name="label"
          placeholder="k=v"
          value={label}
          onInput={(e) => setLabel(e.currentTarget.value)}
        />
      </label>
      <label>
        Group id
        <input
          name="group"
          value={group}
          placeholder="from conductor group list"
          onInput={(e) => setGroup(e.currentTarget.value)}
        />
      </label>
      <button type="submit">Filter</button>
      {filter.problem && <span class="error">{filter.problem}</span>}
    </form>
  );
}
