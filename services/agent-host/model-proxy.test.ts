import { mkdtempSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { startFakeModel } from "../../test/fake-model/server.ts";
import { silentLogger } from "../shared/log.ts";
import { startModelProxy } from "./model-proxy.ts";

/** Posts a Messages API request through a Unix socket, as the container's forwarder does. */
function postOverSocket(
  socketPath: string,
  body: unknown,
  apiKey: string,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath,
        path: "/v1/messages?beta=true",
        method: "POST",
        headers: { "content-type": "application/json", "x-api-key": apiKey },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (d: string) => (text += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

describe("model proxy", () => {
  it("adds the real key on the way out and meters the tokens of streamed answers", async () => {
    await using model = await startFakeModel();
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-proxy-"));
    const proxy = await startModelProxy({
      socketPath: path.join(dir, "model.sock"),
      upstream: model.url,
      apiKey: "sk-real-secret",
      log: silentLogger,
    });
    try {
      const prompt = `<fake-script>[{"text":"hi","usage":{"input_tokens":42,"output_tokens":7}}]</fake-script>`;
      const res = await postOverSocket(
        proxy.socketPath,
        {
          model: "m",
          max_tokens: 10,
          stream: true,
          tools: [{ name: "Write", input_schema: { type: "object" } }],
          messages: [{ role: "user", content: prompt }],
        },
        "placeholder-from-container",
      );
      expect(res.status).toBe(200);
      expect(res.text).toContain("message_stop");
      const seen = model.requests.at(-1)!;
      expect(seen.headers["x-api-key"]).toBe("sk-real-secret");
      expect(JSON.stringify(seen.headers)).not.toContain("placeholder-from-container");
      expect(proxy.take()).toEqual({ inputTokens: 42, outputTokens: 7, requests: 1 });
      expect(proxy.take()).toEqual({ inputTokens: 0, outputTokens: 0, requests: 0 });
    } finally {
      await proxy.close();
    }
  });

  it("answers 502 with an API-shaped error when the upstream is unreachable", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "conductor-proxy-"));
    const proxy = await startModelProxy({
      socketPath: path.join(dir, "m.sock"),
      upstream: "http://127.0.0.1:1",
      apiKey: "k",
      log: silentLogger,
    });
    try {
      const res = await postOverSocket(proxy.socketPath, { messages: [] }, "x");
      expect(res.status).toBe(502);
      expect(JSON.parse(res.text)).toMatchObject({ type: "error", error: { type: "api_error" } });
    } finally {
      await proxy.close();
    }
  });
});
