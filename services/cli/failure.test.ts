import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { failureCode } from "./main.ts";

describe("a client command's failure", () => {
  it("says a call the Orchestrator cancelled was ended by it, and what to do", async () => {
    let said = "";
    const code = await failureCode(
      "watch",
      (s) => (said += s),
      () =>
        Promise.reject(
          new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled),
        ),
    );
    expect(code).toBe(1);
    expect(said).toBe(
      "conductor watch: the Orchestrator ended the call (http/2 stream closed with error code CANCEL (0x8)): it stopped or restarted; run the command again once it is back [Canceled]\n",
    );
  });

  it("passes on any other error's message and code", async () => {
    let said = "";
    const code = await failureCode(
      "get",
      (s) => (said += s),
      () => Promise.reject(new ConnectError("task x not found", Code.NotFound)),
    );
    expect([code, said]).toEqual([1, "conductor get: task x not found [NotFound]\n"]);
  });
});
