// Runnable fake model for manual runs and for suites in other processes:
//   npx node test/fake-model/main.ts [--port N] [--host H] [--log requests.jsonl]
// Prints one line {"url":"http://127.0.0.1:PORT"} to stdout, then serves until SIGTERM/SIGINT.
// With --log, every recorded request is written there as JSON lines on shutdown.
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { startFakeModel } from "./server.ts";

const { values } = parseArgs({
  options: {
    port: { type: "string" },
    host: { type: "string" },
    log: { type: "string" },
  },
});
const port = values.port === undefined ? 0 : Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`fake-model: bad --port ${values.port}\n`);
  process.exit(2);
}

const fake = await startFakeModel({
  port,
  ...(values.host === undefined ? {} : { host: values.host }),
});
process.stdout.write(JSON.stringify({ url: fake.url }) + "\n");

let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  if (values.log !== undefined) {
    writeFileSync(values.log, fake.requests.map((r) => JSON.stringify(r) + "\n").join(""));
  }
  fake.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
