// What the console's test and bench do with a page: find the console's URL in the ready line,
// record each state the queue view shows for each task (with when it showed it), and submit
// from the form.
import type { Page } from "playwright-core";
import type { Conductor } from "../harness.ts";

/** The console URL (with its token) that `conductor up` printed in its ready line. */
export function consoleUrl(c: Conductor): URL {
  const ready = c.processes.at(-1)?.ready ?? {};
  const url = ready["console"];
  if (typeof url !== "string") {
    throw new Error(`the ready line has no console URL: ${JSON.stringify(ready)}`);
  }
  return new URL(url);
}

/** The URL of a console page (`/tasks/<id>`, …), with the token so a fresh tab may use it. */
export function pageUrl(console: URL, pathname: string): string {
  const url = new URL(console);
  url.pathname = pathname;
  return url.toString();
}

/**
 * Installed in a page (page.evaluate): a MutationObserver noting, for every row of the queue
 * view, each state it shows and the wall-clock time (ms) it first showed it, in `__seen`.
 */
const RECORDER = `(() => {
  if (window.__seen) return;
  const seen = (window.__seen = {});
  const scan = () => {
    const at = performance.timeOrigin + performance.now();
    for (const tr of document.querySelectorAll("tr[data-task]")) {
      const list = (seen[tr.dataset.task] ??= []);
      if (list.at(-1)?.state !== tr.dataset.state) list.push({ state: tr.dataset.state, at });
    }
  };
  new MutationObserver(scan).observe(document.body, {
    subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"],
  });
  scan();
})()`;

/** One state a row showed, and when (ms since the epoch). */
export interface SeenState {
  state: string;
  at: number;
}

/** Starts recording the states the page's queue view shows. */
export async function recordStates(page: Page): Promise<void> {
  await page.evaluate(RECORDER);
}

/** The states the page showed for task `id`, in order. */
export async function statesSeen(page: Page, id: string): Promise<SeenState[]> {
  return page.evaluate(`window.__seen?.[${JSON.stringify(id)}] ?? []`);
}

/** Waits until the queue view shows task `id` in `state` (a TaskState name: "RUNNING"). */
export async function waitForRow(page: Page, id: string, state: string, timeout = 60_000) {
  await page.waitForSelector(`tr[data-task="${id}"][data-state="${state}"]`, { timeout });
}

/** What the submit form takes. */
export interface FormFields {
  prompt: string;
  priority?: number;
  labels?: string;
  /** A task type's name, and its parameters (filled into the fields the form shows for it). */
  type?: string;
  params?: Record<string, string>;
}

/** Submits a task from the queue view's form; returns its id as the form reports it. */
export async function submitFromForm(page: Page, fields: FormFields): Promise<string> {
  const text = await submitAnswer(page, fields);
  const id = /^Submitted: (\S+)$/.exec(text)?.[1];
  if (!id) throw new Error(`the form did not submit: ${text}`);
  return id;
}

/** Submits from the queue view's form; returns what the form then says (its id, or an error). */
export async function submitAnswer(page: Page, fields: FormFields): Promise<string> {
  const form = page.locator('[data-testid="submit-form"]');
  await form.locator('textarea[name="prompt"]').fill(fields.prompt);
  await form.locator('input[name="priority"]').fill(String(fields.priority ?? 0));
  await form.locator('input[name="labels"]').fill(fields.labels ?? "");
  await form.locator('select[name="type"]').selectOption(fields.type ?? "");
  for (const [name, value] of Object.entries(fields.params ?? {}))
    await form.locator(`input[name="param-${name}"]`).fill(value);
  const answers = Number(await form.getAttribute("data-answers"));
  await form.locator('button[type="submit"]').click();
  // The form counts the answers it got: the next one is this submission's.
  const message = page.locator(
    `[data-testid="submit-form"][data-answers="${answers + 1}"] [data-testid="submit-message"]`,
  );
  await message.waitFor({ timeout: 10_000 });
  return (await message.textContent()) ?? "";
}
