import { describe, expect, it } from "vitest";
import { takeToken } from "./token.ts";

/** Just enough of a tab: its address, session storage and history. */
function tab(href: string) {
  const items = new Map<string, string>();
  const tab = {
    location: { href } as Location,
    storage: {
      getItem: (k: string) => items.get(k) ?? null,
      setItem: (k: string, v: string) => void items.set(k, v),
    } as Storage,
    history: {
      state: null,
      replaceState: (_s: unknown, _t: string, url: string) => {
        tab.location = { href: new URL(url, href).toString() } as Location;
      },
    } as unknown as History,
  };
  return tab;
}

describe("the console's token", () => {
  it("is taken from the address once, kept, and removed from the address bar", () => {
    const t = tab("http://127.0.0.1:8470/tasks/t1?token=abc&state=RUNNING#x");
    expect(takeToken(t.location, t.storage, t.history)).toBe("abc");
    expect(t.location.href).toBe("http://127.0.0.1:8470/tasks/t1?state=RUNNING#x");
    // A reload (no token in the address) keeps the tab's token.
    expect(takeToken(t.location, t.storage, t.history)).toBe("abc");
  });

  it("is absent when never given", () => {
    const t = tab("http://127.0.0.1:8470/");
    expect(takeToken(t.location, t.storage, t.history)).toBeUndefined();
  });
});
