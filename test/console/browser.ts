// Debian's Chromium, driven by playwright-core, for the console's tests and bench: headless,
// with the flags STACK-NOTES gives (no background traffic on a closed network) and a fresh
// profile folder removed at the end.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium, type BrowserContext } from "playwright-core";

/** Where Debian installs Chromium (apt-get install chromium). */
export const CHROMIUM = "/usr/bin/chromium";

/** Flags for a headless Chromium as root on a machine whose only network is loopback. */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A started browser: its context (open pages with `context.newPage()`); dispose to close it. */
export interface Browser extends AsyncDisposable {
  context: BrowserContext;
  close(): Promise<void>;
}

/** Starts Chromium with a fresh profile and a 1280x800 viewport. */
export async function startBrowser(): Promise<Browser> {
  const profile = mkdtempSync(path.join(tmpdir(), "conductor-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
  });
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close, [Symbol.asyncDispose]: close };
}
