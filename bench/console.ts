/**
 * The web console's two timings (issue 14), in Debian's Chromium against a live `conductor up`
 * (process runtime, fake model):
 * - open: a task of 100,000 events, from navigating to its page to its newest event shown
 *   (median and worst of BENCH_OPENS fresh tabs; target under 1 s);
 * - follow: a task's state change, from the time the Orchestrator stored it (the task's
 *   start_time for RUNNING, end_time for SUCCEEDED) to the queue view's row showing it (a
 *   MutationObserver's clock in the page; one machine, one clock), median of BENCH_RUNS tasks.
 *
 *   npm run bench:console            # 20 tasks, 5 opens
 */
import { millis } from "../services/cli/format.ts";
import { startBrowser } from "../test/console/browser.ts";
import {
  consoleUrl,
  pageUrl,
  recordStates,
  statesSeen,
  waitForRow,
} from "../test/console/console-page.ts";
import { historyLine, writeLongHistory } from "../test/console/history.ts";
import { startFakeModel } from "../test/fake-model/server.ts";
import { scripted, spec, startConductor, waitForEnd } from "../test/harness.ts";

const RUNS = Number(process.env["BENCH_RUNS"] ?? 20);
const OPENS = Number(process.env["BENCH_OPENS"] ?? 5);
const EVENTS = 100_000;
const OPEN_TARGET_MS = 1_000;
/** A task that runs a little while (so its RUNNING row shows before it ends), then succeeds. */
const PROMPT = scripted([{ text: "done", delay_ms: 300 }]);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const ms = (x: number) => `${Math.round(x)} ms`;

await using model = await startFakeModel();
await using conductor = await startConductor({
  modelUrl: model.url,
  agents: 2,
  env: { CONDUCTOR_OBSERVABILITY_CONSOLE: "127.0.0.1:0" },
});
await using browser = await startBrowser();

// follow: state changes to the queue view.
const page = await browser.context.newPage();
await page.goto(consoleUrl(conductor).toString());
await page.waitForSelector('[data-testid="live-status"]:text("live")');
await recordStates(page);
const running: number[] = [];
const ended: number[] = [];
for (let i = 0; i < RUNS; i++) {
  const { task } = await conductor.client.submitTask({ spec: spec({ prompt: PROMPT }) });
  const done = await waitForEnd(conductor.client, task!.id);
  await waitForRow(page, done.id, "SUCCEEDED");
  const seen = await statesSeen(page, done.id);
  const at = (state: string) => seen.find((s) => s.state === state)?.at;
  const shownRunning = at("RUNNING");
  const start = millis(done.startTime);
  if (shownRunning !== undefined && start !== undefined) running.push(shownRunning - start);
  ended.push(at("SUCCEEDED")! - millis(done.endTime)!);
}
await page.close();

// open: a long history, in fresh tabs.
for (const p of conductor.processes.reverse()) await p.stop();
const id = writeLongHistory(conductor.dataDir, EVENTS);
await conductor.restart();
const url = pageUrl(consoleUrl(conductor), `/tasks/${id}`);
const opens: number[] = [];
for (let i = 0; i < OPENS; i++) {
  const tab = await browser.context.newPage();
  const start = Date.now();
  await tab.goto(url);
  await tab.waitForSelector(`.log .line:has-text("${historyLine(EVENTS)}")`);
  opens.push(Date.now() - start);
  await tab.close();
}

const result = {
  follow_succeeded_median_ms: Math.round(median(ended)),
  follow_running_median_ms: Math.round(median(running)),
  follow_runs: ended.length,
  open_100k_median_ms: median(opens),
  open_100k_max_ms: Math.max(...opens),
};
console.log(
  [
    `state change → shown in the queue view, median of ${ended.length}: SUCCEEDED ${ms(median(ended))}` +
      ` (worst ${ms(Math.max(...ended))}), RUNNING ${ms(median(running))} (${running.length} seen)`,
    `a task of ${EVENTS.toLocaleString("en-US")} events opens (newest shown) in ${ms(median(opens))}` +
      ` median, ${ms(Math.max(...opens))} worst of ${OPENS}; target under ${ms(OPEN_TARGET_MS)}` +
      (Math.max(...opens) < OPEN_TARGET_MS ? " ✓" : " ✗"),
    JSON.stringify(result),
  ].join("\n"),
);
