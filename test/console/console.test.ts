// The web console end to end: a real `conductor up` serving it (process runtime, fake model),
// Debian's Chromium driving it through playwright-core. Screenshots of every view are written
// to test-artifacts/console/. Timings are not asserted here: bench/console.ts measures them.
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import path from "node:path";
import type { Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startFakeModel, type FakeModel } from "../fake-model/server.ts";
import { ROOT, scripted, spec, startConductor, waitForEnd, type Conductor } from "../harness.ts";
import { makeRepository } from "../repositories.ts";
import { startBrowser, type Browser } from "./browser.ts";
import {
  consoleUrl,
  pageUrl,
  recordStates,
  statesSeen,
  submitAnswer,
  submitFromForm,
  waitForRow,
} from "./console-page.ts";
import { historyLine, writeLongHistory } from "./history.ts";

const ARTIFACTS = path.join(ROOT, "test-artifacts", "console");
const shot = (page: Page, name: string) =>
  page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });

describe("the web console", () => {
  let model: FakeModel | undefined;
  let conductor: Conductor | undefined;
  let browser: Browser | undefined;
  /** Uncaught errors of any page: there must be none. */
  const pageErrors: string[] = [];
  const started = () => {
    if (!model || !conductor || !browser) throw new Error("not started");
    return { model, conductor, browser, url: consoleUrl(conductor) };
  };

  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    // The console as the source now stands (npm ci built it once; a change since would not show).
    execFileSync(path.join(ROOT, "node_modules", ".bin", "vite"), ["build", "console"], {
      cwd: ROOT,
      stdio: "ignore",
    });
    model = await startFakeModel();
    conductor = await startConductor({
      modelUrl: model.url,
      // One agent: a task submitted while it is busy stays QUEUED until the busy one ends.
      agents: 1,
      env: { CONDUCTOR_OBSERVABILITY_CONSOLE: "127.0.0.1:0" },
    });
    browser = await startBrowser();
    browser.context.on("page", (page) =>
      page.on("pageerror", (e) => pageErrors.push(`${page.url()}: ${e.message}`)),
    );
  });
  afterEach(() => {
    expect(pageErrors.splice(0)).toEqual([]);
  });
  afterAll(async () => {
    await browser?.close();
    await conductor?.close();
    await model?.close();
  });

  it("prints its URL with a token, and refuses API calls without that token", async () => {
    const { browser, url } = started();
    expect(url.toString()).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/\?token=[A-Za-z0-9_-]{43}$/);
    const token = url.searchParams.get("token")!;
    const call = (headers: Record<string, string>) =>
      fetch(new URL("/conductor.v1.OrchestratorService/GetStats", url), {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: "{}",
      });
    const none = await call({});
    expect(none.status).toBe(401);
    expect(((await none.json()) as { code: string }).code).toBe("unauthenticated");
    expect((await call({ authorization: `Bearer ${"x".repeat(43)}` })).status).toBe(401);
    expect((await call({ authorization: `Bearer ${token}` })).status).toBe(200);
    // The static files need no token.
    const index = await fetch(new URL("/tasks/anything", url));
    expect(index.status).toBe(200);
    expect(await index.text()).toContain('<div id="app">');

    // A tab opened without the token: the page says how to get in, and its own calls fail.
    const page = await browser.context.newPage();
    await page.goto(url.origin);
    await expect
      .poll(() => page.locator('[data-testid="unauthenticated"]').textContent())
      .toContain("open the URL printed by `conductor up`");
    const status = await page.evaluate(
      `fetch("/conductor.v1.OrchestratorService/GetStats", { method: "POST",
        headers: { "content-type": "application/json" }, body: "{}" }).then((r) => r.status)`,
    );
    expect(status).toBe(401);
    await shot(page, "unauthenticated");
    await page.close();
  });

  it("submits from the form, follows the task live, shows its tool call and result, and cancels a running one", async () => {
    const { browser, conductor, url } = started();
    const page = await browser.context.newPage();
    await page.goto(url.toString());
    await page.waitForSelector('[data-testid="live-status"]:text("live")');
    // The token left the address bar (it stays in the tab's sessionStorage).
    expect(page.url()).not.toContain("token=");
    await recordStates(page);
    await page.evaluate("window.__notReloaded = true");

    // What the API refuses, the form says in the API's words.
    expect(await submitAnswer(page, { prompt: "too eager", priority: 11 })).toContain(
      "spec.priority must be between 0 and 10",
    );

    // A task that holds the only agent until it is cancelled, and one queued behind it.
    const blocker = await submitFromForm(page, {
      // The model never answers after the tool call: the run holds the agent until cancelled.
      prompt: scripted([{ bash: "echo holding the agent" }, { hang: true }], "Hold the agent."),
    });
    const id = await submitFromForm(page, {
      prompt: scripted(
        [{ bash: "echo console-tool-call", delay_ms: 1_000 }, { text: "console task done" }],
        "Say hello.",
      ),
      priority: 5,
      labels: "suite=console",
    });
    await waitForRow(page, id, "QUEUED");

    // The running one, on its own page in a second tab opened as a link would be (no token in
    // its address: the console's origin keeps it): its tool call, then Cancel.
    const tab = await browser.context.newPage();
    await tab.goto(`${url.origin}/tasks/${blocker}`);
    await tab.waitForSelector('.log .tool:has-text("echo holding the agent")');
    await tab.waitForSelector('[data-testid="task-state"]:text("RUNNING")');
    await waitForRow(page, blocker, "RUNNING");
    await shot(page, "tasks");
    await tab.getByRole("button", { name: "Cancel" }).click();
    await tab.waitForSelector('[data-testid="task-state"]:text("CANCELLED")');
    await tab.waitForSelector('[data-testid="error-kind"]:text("CANCELLED")');
    await shot(tab, "task-cancelled");
    await tab.close();

    // The queued task now runs and succeeds: the first tab saw each step without reloading.
    await waitForRow(page, blocker, "CANCELLED");
    await waitForRow(page, id, "SUCCEEDED");
    const states = (await statesSeen(page, id)).map((s) => s.state);
    expect(inOrder(states, ["QUEUED", "RUNNING", "SUCCEEDED"]), states.join(" → ")).toBe(true);
    expect(await page.evaluate("window.__notReloaded === true")).toBe(true);

    // Filtered by its label, only it is listed.
    await page.locator('[data-testid="filters"] input[name="label"]').fill("suite=console");
    await page.locator('[data-testid="filters"] button[type="submit"]').click();
    await expect.poll(() => page.locator("tr[data-task]").count()).toBe(1);
    expect(await page.locator("tr[data-task]").getAttribute("data-task")).toBe(id);

    // Its page: the agent's tool call and the result, as `conductor watch` shows them.
    await page.click(`a[href="/tasks/${id}"]`);
    await page.waitForSelector('.log .tool:has-text("→ Bash"):has-text("echo console-tool-call")');
    await page.waitForSelector('.log .result:has-text("result: console task done")');
    await page.waitForSelector('[data-testid="result"]:text("console task done")');
    expect(await page.locator('[data-testid="task-state"]').textContent()).toBe("SUCCEEDED");
    expect(await page.locator('[data-testid="prompt"]').textContent()).toContain("Say hello.");
    expect(await page.locator('[data-testid="spec"]').textContent()).toContain("suite=console");
    await shot(page, "task");

    // A task type's parameters: the form shows a field for each, and they reach the spec.
    await page.click('nav a[href="/"]');
    const typed = await submitFromForm(page, {
      prompt: "Review the parser.",
      type: "code_review",
      params: { focus: "error handling" },
    });
    const stored = (await conductor.client.getTask({ id: typed })).task!;
    expect(stored.spec?.type).toBe("code_review");
    expect(stored.spec?.params).toEqual({ focus: "error handling" });
    await conductor.client.cancelTask({ id: typed }).catch(() => undefined); // free the agent
    await page.close();
  });

  it("shows agents and nodes, groups with their aggregate, and charts", async () => {
    const { browser, conductor, url } = started();
    const { group } = await conductor.client.submitTaskGroup({
      spec: {
        name: "console-group",
        members: ["a", "b"].map((name) => ({
          name,
          spec: spec({ prompt: scripted([{ text: `member ${name} done` }]) }),
        })),
      },
    });
    const page = await browser.context.newPage();
    await page.goto(url.toString());

    await page.click('nav a[href="/agents"]');
    await page.waitForSelector('[data-testid="agents"] tr[data-agent]');
    await page.waitForSelector('[data-testid="nodes"] tr[data-node]');
    await shot(page, "agents");

    await page.click('nav a[href="/groups"]');
    await page.click(`a[href="/groups/${group!.id}"]`);
    await page.waitForSelector('[data-testid="group"] .state:text("SUCCEEDED")', {
      timeout: 60_000,
    });
    expect(await page.locator('[data-testid="members"] tbody tr').count()).toBe(2);
    await shot(page, "group");
    await page.click('nav a[href="/groups"]');
    await page.waitForSelector(`tr[data-group="${group!.id}"]`);
    await shot(page, "groups");
    // Its tasks, in the queue view filtered by the group.
    await page.goto(pageUrl(url, `/groups/${group!.id}`));
    await page.getByRole("link", { name: "Its tasks in the queue view" }).click();
    await expect.poll(() => page.locator("tr[data-task]").count()).toBe(2);

    // Two samples of GetStats make a line; the view says what the last one holds.
    await page.click('nav a[href="/charts"]');
    await expect.poll(() => page.locator(".chart").count()).toBe(3);
    // Each draws its line once there are two samples (the console takes one every 3 s).
    await expect.poll(() => page.locator(".chart canvas").count(), { timeout: 12_000 }).toBe(3);
    await page.waitForSelector(".charts .note:has-text('ended')");
    await shot(page, "charts");
    await page.close();
  });

  it("shows a task's change on a git repository, and its patch", async () => {
    const { browser, conductor, url } = started();
    const repo = path.join(conductor.dir, "src", "app");
    makeRepository(repo);
    const { task } = await conductor.client.submitTask({
      spec: spec({
        prompt: scripted([
          { write: { path: "a.txt", content: "edited in the console test\n" } },
          { text: "edited a.txt" },
        ]),
        workspace: { kind: { case: "git", value: { repository: repo } } },
      }),
    });
    await waitForEnd(conductor.client, task!.id);
    const page = await browser.context.newPage();
    await page.goto(pageUrl(url, `/tasks/${task!.id}`));
    await page.waitForSelector('[data-testid="change"]:has-text("M  a.txt")');
    await page.waitForSelector('[data-testid="patch"] .add:text-is("+edited in the console test")');
    await page.waitForSelector('[data-testid="patch"] .del:text-is("-original a")');
    await shot(page, "task-patch");
    // A task id that names no task: its NOT_FOUND alone, no event log waiting for events.
    await page.goto(pageUrl(url, `/tasks/${randomUUID()}`));
    await page.waitForSelector('[role="alert"]:has-text("(not found)")');
    expect(await page.locator('[data-testid="log-status"]').count()).toBe(0);
    // So for a group; and an address whose id cannot be decoded says so, no blank page.
    await page.goto(pageUrl(url, `/groups/${randomUUID()}`));
    await page.waitForSelector('[role="alert"]:has-text("not found")');
    expect(await page.locator('[data-testid="members"]').count()).toBe(0);
    for (const bad of ["/tasks/%zz", "/groups/%E0%A4%A"]) {
      await page.goto(pageUrl(url, bad));
      await page.waitForSelector('[role="alert"]:has-text("malformed %-escape")');
      expect(await page.locator('[data-testid="task"], [data-testid="group"]').count()).toBe(0);
    }
    await page.close();
  });

  it("opens a task of 100,000 events at its newest, and loads older ones on scrolling up", async () => {
    const { conductor } = started();
    for (const p of conductor.processes.reverse()) await p.stop();
    const id = writeLongHistory(conductor.dataDir, 100_000);
    await conductor.restart();
    const { browser, url } = started();
    const page = await browser.context.newPage();
    await page.goto(pageUrl(url, `/tasks/${id}`));
    await page.waitForSelector(`.log .line:has-text("${historyLine(100_000)}")`);
    await page.waitForSelector('.log .state:has-text("[SUCCEEDED]")');
    const oldest = () =>
      page.evaluate<number>(
        `Math.min(...[...document.querySelectorAll(".log .line")].map((l) => Number(l.dataset.seq)))`,
      );
    const first = await oldest();
    expect(first).toBeGreaterThan(90_000);
    // Scrolled to the top, the log loads the page before and keeps the reader where they were.
    for (let i = 0; i < 3; i++) {
      const before = await oldest();
      await page.evaluate(`document.querySelector('[data-testid="event-log"]').scrollTop = 0`);
      await expect.poll(oldest).toBeLessThan(before);
    }
    expect(await oldest()).toBeLessThan(first - 500);
    await shot(page, "history");
    await page.close();
  });
});

/** Whether `want` appears in `seen` in order (other states may come between). */
function inOrder(seen: string[], want: string[]): boolean {
  let i = 0;
  for (const s of seen) if (s === want[i]) i++;
  return i === want.length;
}
