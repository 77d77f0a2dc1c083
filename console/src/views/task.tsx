// A task's page: what it is and how it stands (as `conductor get` says it), its live event
// log, its result, and its patch when its run changed a git workspace; Cancel while it runs.
import { useEffect, useState } from "preact/hooks";
import { ErrorKind, type Task } from "../../../gen/conductor/v1/task_pb.js";
import { changeLines } from "../../../services/cli/change-text.ts";
import { taskText } from "../../../services/cli/task-text.ts";
import { useApi, useNow } from "../context.ts";
import { aborted, errorText } from "../errors.ts";
import { isFinal, nodeOf, runTime, stateName, usage, usd } from "../format.ts";
import { useAgents } from "./agents-map.ts";
import { EventLog } from "./event-log.tsx";
import { patchClasses } from "./patch-lines.ts";

/** The task page, `/tasks/:id`: a fresh page for each task, so nothing of the last one shows. */
export function TaskView({ params }: { params: { id: string } }) {
  return <TaskPage key={params.id} id={params.id} />;
}

function TaskPage({ id }: { id: string }) {
  const api = useApi();
  const agents = useAgents();
  const now = useNow();
  const [task, setTask] = useState<Task>();
  const [error, setError] = useState<string>();
  const [asked, setAsked] = useState(0); // bumped to read the task again

  useEffect(() => {
    const stop = new AbortController();
    api
      .getTask({ id }, { signal: stop.signal })
      .then(({ task }) => {
        setTask(task);
        setError(undefined);
      })
      .catch((e: unknown) => {
        if (!aborted(e, stop.signal)) setError(errorText(e));
      });
    return () => stop.abort();
  }, [api, id, asked]);

  async function cancel() {
    try {
      const { task } = await api.cancelTask({ id });
      setTask(task);
    } catch (e) {
      setError(errorText(e));
    }
  }

  const r = task?.result;
  return (
    <section class="task" data-testid="task">
      <h1>
        Task <code>{id}</code>{" "}
        {task && (
          <span class={`state ${stateName(task.state)}`} data-testid="task-state">
            {stateName(task.state)}
          </span>
        )}{" "}
        {task && !isFinal(task.state) && (
          <button type="button" class="danger" onClick={() => void cancel().catch(() => undefined)}>
            Cancel
          </button>
        )}
      </h1>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {task?.spec && (
        <pre class="task-prompt" data-testid="prompt" title="the task's prompt">
          {clip(task.spec.prompt, MAX_PROMPT_SHOWN)}
        </pre>
      )}
      {task?.spec && (
        <dl class="facts" data-testid="spec">
          <dt>Type</dt>
          <dd>{task.spec.type || "generic"}</dd>
          <dt>Priority</dt>
          <dd>{task.spec.priority}</dd>
          {Object.keys(task.spec.params).length > 0 && (
            <>
              <dt>Parameters</dt>
              <dd>{pairs(task.spec.params)}</dd>
            </>
          )}
          {Object.keys(task.spec.labels).length > 0 && (
            <>
              <dt>Labels</dt>
              <dd>{pairs(task.spec.labels)}</dd>
            </>
          )}
          {task.groupId && (
            <>
              <dt>Group</dt>
              <dd>
                <a href={`/groups/${encodeURIComponent(task.groupId)}`}>{task.groupId}</a>
                {task.member ? ` (${task.member})` : ""}
              </dd>
            </>
          )}
        </dl>
      )}
      {task && (
        <dl class="facts">
          <dt>Agent</dt>
          <dd>{task.agentId || "-"}</dd>
          <dt>Node</dt>
          <dd>{nodeOf(task.agentId, agents)}</dd>
          <dt>Duration</dt>
          <dd>{runTime(task, now)}</dd>
          <dt>Cost</dt>
          <dd>{r ? usd(r.costUsd) : "-"}</dd>
          {r?.errorKind ? (
            <>
              <dt>Error kind</dt>
              <dd data-testid="error-kind">{ErrorKind[r.errorKind]}</dd>
            </>
          ) : null}
          {r && (
            <>
              <dt>Usage</dt>
              <dd>{usage(r) ?? "-"}</dd>
            </>
          )}
        </dl>
      )}
      {/* Opened with the task's read, not after it; gone when there is no such task. */}
      {(task || !error) && (
        <>
          <h2>Events</h2>
          <EventLog
            taskId={id}
            onEvent={(e) => {
              if (e.kind.case !== "output") setAsked((n) => n + 1);
            }}
          />
        </>
      )}
      {r && (r.text || r.error) && (
        <>
          <h2>Result</h2>
          <pre class={r.error ? "result error" : "result"} data-testid="result">
            {r.error || r.text}
          </pre>
        </>
      )}
      {r?.change && (
        <>
          <h2>Change</h2>
          <pre data-testid="change">{changeLines(r.change).join("\n")}</pre>
        </>
      )}
      {task && isFinal(task.state) && r?.change && <Patch taskId={id} />}
      {task && (
        <details class="panel">
          <summary>Everything (as `conductor get {id}` shows it)</summary>
          <pre data-testid="task-text">{taskText(task).join("\n")}</pre>
        </details>
      )}
    </section>
  );
}

/** The task's change as `git format-patch` output (GetTaskPatch), lines coloured. */
function Patch({ taskId }: { taskId: string }) {
  const api = useApi();
  const [text, setText] = useState<string>();
  const [error, setError] = useState<string>();
  useEffect(() => {
    const stop = new AbortController();
    (async () => {
      const decoder = new TextDecoder();
      let all = "";
      for await (const { chunk } of api.getTaskPatch({ taskId }, { signal: stop.signal }))
        all += decoder.decode(chunk, { stream: true });
      setText(all + decoder.decode());
    })().catch((e: unknown) => {
      if (!aborted(e, stop.signal)) setError(errorText(e));
    });
    return () => stop.abort();
  }, [api, taskId]);
  const lines = (text ?? "").split("\n");
  const shown = lines.slice(0, MAX_PATCH_LINES);
  return (
    <>
      <h2>Patch</h2>
      {error && <p class="note">{error}</p>}
      {text !== undefined && (
        <pre class="patch" data-testid="patch">
          {patchClasses(shown).map((c, i) => (
            <div key={i} class={c}>
              {shown[i] || " "}
            </div>
          ))}
          {lines.length > shown.length &&
            `… ${lines.length - shown.length} more lines (conductor diff ${taskId})`}
        </pre>
      )}
    </>
  );
}
const MAX_PATCH_LINES = 5_000;
/** Most characters of a prompt the page shows (the whole is under "Everything"). */
const MAX_PROMPT_SHOWN = 2_000;

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** A map as `k=v` pairs, separated by commas. */
function pairs(map: Record<string, string>): string {
  return Object.entries(map)
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
}
