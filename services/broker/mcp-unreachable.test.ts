// The MCP server with no Broker behind its socket (none started, or one that stopped): every
// tool answers at once with an error that says so in Conductor's words and how to start one,
// never a bare socket error, and never hangs.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import net from "node:net";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MCP_SERVER_SCRIPT, startBrokerRelay, type BrokerRelay } from "./access.ts";

/** Starts the MCP server on `socket` and calls one tool through its stdio. */
async function callTool(socket: string, credentialFile: string, name: string, args: object) {
  const child = spawn(
    process.execPath,
    [MCP_SERVER_SCRIPT, "--socket", socket, "--credential-file", credentialFile],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const answer = new Promise<Record<string, unknown>>((resolve) => {
    createInterface({ input: child.stdout }).once("line", (line) =>
      resolve(JSON.parse(line) as Record<string, unknown>),
    );
  });
  const params = { name, arguments: args };
  child.stdin.end(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/call", params }) + "\n");
  const msg = await answer;
  await exited;
  return msg.result as { isError?: boolean; content: { text: string }[] };
}

describe("the MCP server without a Broker", () => {
  let dir: string;
  let credentialFile: string;
  let relay: BrokerRelay;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "mcp-no-broker-"));
    credentialFile = path.join(dir, "broker.credential");
    writeFileSync(credentialFile, "agent-1.not-checked-by-anyone\n");
    // An agent's relay whose Broker socket has nothing listening.
    relay = await startBrokerRelay({
      socketPath: path.join(dir, "relay.sock"),
      connect: () => net.connect(path.join(dir, "broker.sock")),
    });
  });
  afterAll(async () => {
    await relay?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const cases: [string, () => string][] = [
    ["through an agent's relay", () => relay.socketPath],
    ["on a socket that does not exist", () => path.join(dir, "broker.sock")],
  ];
  for (const [where, socket] of cases) {
    it(`explains every tool's failure ${where}`, async () => {
      const calls: [string, object][] = [
        ["send_message", { to: "agent-2", message: "hi" }],
        ["request", { to: "agent-2", message: "port?", timeout_seconds: 1 }],
        ["read_messages", {}],
        ["reply", { correlation_id: "c-1", message: "42" }],
        ["list_agents", {}],
      ];
      for (const [name, args] of calls) {
        const result = await callTool(socket(), credentialFile, name, args);
        expect(result.isError, name).toBe(true);
        const text = result.content[0]!.text;
        expect(text).toMatch(new RegExp(`^${name} failed: no Conductor Broker answers \\(`));
        expect(text).toMatch(/`conductor broker`/);
      }
    });
  }
});
