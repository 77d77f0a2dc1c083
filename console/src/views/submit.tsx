// The submit form: prompt, priority, type (from ListTaskTypes) with its parameters, and
// labels; the API's error, if it refuses the task, shown as it says it.
import { ConnectError } from "@connectrpc/connect";
import { useState } from "preact/hooks";
import type { Task } from "../../../gen/conductor/v1/task_pb.js";
import { useApi, usePoll } from "../context.ts";
import { errorText } from "../errors.ts";
import { parseLabels } from "../format.ts";

/** The form; `onSubmitted` gets the stored task. */
export function SubmitForm({ onSubmitted }: { onSubmitted: (t: Task) => void }) {
  const api = useApi();
  const types = usePoll(async (signal) => (await api.listTaskTypes({}, { signal })).types, 60_000, [
    api,
  ]);
  const [prompt, setPrompt] = useState("");
  const [priority, setPriority] = useState("0");
  const [type, setType] = useState("");
  const [labels, setLabels] = useState("");
  const [params, setParams] = useState<Record<string, string>>({});
  const declared = types.value?.find((t) => t.name === type)?.parameters ?? [];
  const [busy, setBusy] = useState(false);
  const [message, setMessage] = useState<{ error: boolean; text: string }>();
  const [answers, setAnswers] = useState(0); // how many submissions were answered, for tests

  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setMessage(undefined);
    try {
      const { task, deduplicated } = await api.submitTask({
        spec: {
          prompt,
          priority: Number(priority),
          type,
          labels: parseLabels(labels),
          params: Object.fromEntries(Object.entries(params).filter(([, v]) => v !== "")),
        },
      });
      if (!task) throw new Error("the Orchestrator answered without the task");
      setMessage({
        error: false,
        text: `${deduplicated ? "Already stored" : "Submitted"}: ${task.id}`,
      });
      setPrompt("");
      onSubmitted(task);
    } catch (err) {
      // A label the form could not read is ours to explain, not an API error with a code.
      const text = err instanceof ConnectError ? errorText(err) : (err as Error).message;
      setMessage({ error: true, text });
    } finally {
      setAnswers((n) => n + 1);
      setBusy(false);
    }
  }

  return (
    <form
      class="submit"
      onSubmit={(e) => void submit(e).catch(() => undefined)}
      // What was said of the last submission goes once the form changes (the browser's own
      // checks may then block the next one without a word from us).
      onInput={() => setMessage(undefined)}
      data-testid="submit-form"
      data-answers={String(answers)}
    >
      <label class="wide">
        Prompt
        <textarea
          name="prompt"
          rows={3}
          required
          value={prompt}
          onInput={(e) => setPrompt(e.currentTarget.value)}
        />
      </label>
      <label>
        Priority
        <input
          name="priority"
          type="number"
          value={priority}
          onInput={(e) => setPriority(e.currentTarget.value)}
        />
      </label>
      <label>
        Type
        <select
          name="type"
          value={type}
          onChange={(e) => {
            setType(e.currentTarget.value);
            setParams({});
          }}
        >
          <option value="">generic</option>
          {(types.value ?? [])
            .filter((t) => t.name !== "generic")
            .map((t) => (
              <option key={t.name} value={t.name} title={t.description}>
                {t.name}
              </option>
            ))}
        </select>
      </label>
      {declared.map((p) => (
        <label key={p.name} title={p.description}>
          {p.name}
          {p.required ? " *" : ""}
          <input
            name={`param-${p.name}`}
            required={p.required}
            placeholder={p.defaultValue || (p.values.length > 0 ? p.values.join(" | ") : "")}
            value={params[p.name] ?? ""}
            onInput={(e) => setParams({ ...params, [p.name]: e.currentTarget.value })}
          />
        </label>
      ))}
      <label>
        Labels
        <input
          name="labels"
          placeholder="team=web, env=dev"
          value={labels}
          onInput={(e) => setLabels(e.currentTarget.value)}
        />
      </label>
      <button type="submit" disabled={busy}>
        Submit
      </button>
      {message && (
        <p class={message.error ? "error" : "note"} role="status" data-testid="submit-message">
          {message.text}
        </p>
      )}
    </form>
  );
}
