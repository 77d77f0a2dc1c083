// Task groups: the newest groups (ListTaskGroups, paged) and one group with its aggregate and
// members (GetTaskGroup), read again every few seconds until it has ended.
import { useState } from "preact/hooks";
import { ErrorKind } from "../../../gen/conductor/v1/task_pb.js";
import type { TaskGroup } from "../../../gen/conductor/v1/group_pb.js";
import { useApi, useNow, usePoll } from "../context.ts";
import { errorText } from "../errors.ts";
import { age, count, duration, isFinal, stateName, usd } from "../format.ts";

/** The groups view, `/groups`. */
export function GroupsView() {
  const api = useApi();
  const now = useNow();
  const [older, setOlder] = useState<TaskGroup[]>([]);
  const [next, setNext] = useState<string>();
  const [error, setError] = useState<string>();
  const first = usePoll((signal) => api.listTaskGroups({ pageSize: 50 }, { signal }), 3_000, [api]);
  const token = next ?? first.value?.nextPageToken ?? "";
  const groups = [
    ...(first.value?.groups ?? []),
    ...older.filter((g) => !first.value?.groups.some((f) => f.id === g.id)),
  ];

  async function more() {
    try {
      const page = await api.listTaskGroups({ pageSize: 50, pageToken: token });
      setOlder((o) => [...o, ...page.groups]);
      setNext(page.nextPageToken);
    } catch (e) {
      setError(errorText(e));
    }
  }

  return (
    <section>
      <h1>Groups</h1>
      {(first.error ?? error) && <p class="error">{first.error ?? error}</p>}
      <table data-testid="groups">
        <thead>
          <tr>
            <th>Group</th>
            <th>Name</th>
            <th>State</th>
            <th>Tasks</th>
            <th>By state</th>
            <th>Cost</th>
            <th>Age</th>
          </tr>
        </thead>
        <tbody>
          {groups.map((g) => (
            <tr key={g.id} data-group={g.id}>
              <td>
                <a href={`/groups/${encodeURIComponent(g.id)}`}>{g.id}</a>
              </td>
              <td>{g.spec?.name ?? ""}</td>
              <td>{stateName(g.state)}</td>
              <td>{g.aggregate?.taskCount ?? 0}</td>
              <td>{byState(g.aggregate?.tasksByState)}</td>
              <td>{usd(g.aggregate?.costUsd ?? 0)}</td>
              <td>{age(g.createTime, now)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {groups.length === 0 && first.value !== undefined && (
        <p class="note">No groups yet (conductor group submit).</p>
      )}
      {token && (
        <button type="button" onClick={() => void more().catch(() => undefined)}>
          More
        </button>
      )}
    </section>
  );
}

/** One group, `/groups/:id`: a fresh page for each group. */
export function GroupView({ params }: { params: { id: string } }) {
  return <GroupPage key={params.id} id={params.id} />;
}

function GroupPage({ id }: { id: string }) {
  const api = useApi();
  const [ended, setEnded] = useState(false);
  const group = usePoll(
    async (signal) => {
      const { group } = await api.getTaskGroup({ id }, { signal });
      if (group && isFinal(group.state)) setEnded(true);
      return group;
    },
    ended ? 3_600_000 : 2_000,
    [api, id, ended],
  );
  const g = group.value;
  const a = g?.aggregate;
  return (
    <section data-testid="group">
      <h1>
        Group <code>{id}</code>{" "}
        {g && <span class={`state ${stateName(g.state)}`}>{stateName(g.state)}</span>}
      </h1>
      {group.error && (
        <p class="error" role="alert">
          {group.error}
        </p>
      )}
      {g && (
        <>
          <p>
            <a href={`/?group=${encodeURIComponent(id)}`}>Its tasks in the queue view</a>
          </p>
          <dl class="facts">
            <dt>Name</dt>
            <dd>{g.spec?.name || "-"}</dd>
            <dt>Tasks</dt>
            <dd>{a?.taskCount ?? 0}</dd>
            <dt>By state</dt>
            <dd>{byState(a?.tasksByState)}</dd>
            <dt>Cost</dt>
            <dd>{usd(a?.costUsd ?? 0)}</dd>
            <dt>Tokens</dt>
            <dd>
              {count(a?.usage?.inputTokens ?? 0n)} in, {count(a?.usage?.outputTokens ?? 0n)} out
            </dd>
            <dt>Run time (sum)</dt>
            <dd>{duration(Number(a?.durationMs ?? 0n))}</dd>
            <dt>Elapsed</dt>
            <dd>{duration(Number(a?.elapsedMs ?? 0n))}</dd>
            {g.reason && (
              <>
                <dt>Reason</dt>
                <dd>{g.reason}</dd>
              </>
            )}
            {g.reduceTaskId && (
              <>
                <dt>Reduce</dt>
                <dd>
                  <a href={`/tasks/${encodeURIComponent(g.reduceTaskId)}`}>{g.reduceTaskId}</a>
                </dd>
              </>
            )}
          </dl>
          <table data-testid="members">
            <thead>
              <tr>
                <th>Member</th>
                <th>Task</th>
                <th>State</th>
                <th>Attempts</th>
                <th>Cost</th>
                <th>Duration</th>
                <th>Error</th>
              </tr>
            </thead>
            <tbody>
              {g.members.map((m) => (
                <tr key={m.taskId}>
                  <td>{m.name}</td>
                  <td>
                    <a href={`/tasks/${encodeURIComponent(m.taskId)}`}>{m.taskId}</a>
                  </td>
                  <td>{stateName(m.state)}</td>
                  <td>{m.attempts}</td>
                  <td>{usd(m.costUsd)}</td>
                  <td>{m.durationMs ? duration(Number(m.durationMs)) : "-"}</td>
                  <td>{m.errorKind ? `${ErrorKind[m.errorKind]}: ${m.error}` : ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
    </section>
  );
}

/** Counts by state as "RUNNING 2 · SUCCEEDED 5" (the map's keys are TASK_STATE_… names). */
function byState(counts: Record<string, bigint> | undefined): string {
  return Object.entries(counts ?? {})
    .filter(([, n]) => n > 0n)
    .map(([s, n]) => `${s.replace(/^TASK_STATE_/, "")} ${n}`)
    .join(" · ");
}
