import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { conductorCommand } from "./locate.ts";

describe("conductorCommand", () => {
  it("names the running script by a path a shell runs as it is, however it is spelt", () => {
    expect(conductorCommand("/opt/conductor/bin/conductor.js")).toBe(
      "/opt/conductor/bin/conductor.js",
    );
    for (const script of ["/home/a b/bin/conductor.js", "/tmp/it's $HOME/conductor.js"]) {
      const said = execFileSync("sh", ["-c", `printf %s ${conductorCommand(script)}`], {
        encoding: "utf8",
      });
      expect(said).toBe(script);
    }
  });
});
