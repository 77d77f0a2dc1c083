import { describe, expect, it } from "vitest";
import { loginAccountsAmong } from "./accounts.ts";

const PASSWD = [
  "root:x:0:0:root:/root:/bin/bash",
  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
  "alice:x:1000:1000:Alice:/home/alice:/bin/bash",
  "conductor-agent:x:61000:61000::/nonexistent:/usr/sbin/nologin",
  "svc:x:61001:61001::/:/bin/false",
  "bob:x:61002:61002::/home/bob:/bin/zsh",
  "broken line",
  "",
].join("\n");

describe("loginAccountsAmong", () => {
  it("finds accounts a person can log in as within the agents' uids", () => {
    expect(loginAccountsAmong(PASSWD, 1000, 3)).toEqual([
      { name: "alice", uid: 1000, shell: "/bin/bash" },
    ]);
    expect(loginAccountsAmong(PASSWD, 61000, 3)).toEqual([
      { name: "bob", uid: 61002, shell: "/bin/zsh" },
    ]);
  });

  it("accepts accounts made for the agents (no login shell) and uids no one has", () => {
    expect(loginAccountsAmong(PASSWD, 61000, 2)).toEqual([]);
    expect(loginAccountsAmong(PASSWD, 70000, 1000)).toEqual([]);
  });
});
