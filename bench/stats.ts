// GetStats' store work (counts, totals, run-time percentiles) with many finished tasks against
// few, in-process on node:sqlite: the percentiles come from a trigger-kept histogram, so the
// figure should not grow with the number of finished runs (it was an OFFSET walk of the run_ms
// index: 0.05 ms at 1,000 finished, 2.16 ms at 100,000).
//   npm run bench:stats [-- --finished 100000 --small 1000 --calls 2000]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { parseArgs } from "node:util";
import { TaskStore } from "../services/orchestrator/store.ts";
import { fillStore } from "./peers-conductor.ts";

const { values } = parseArgs({
  options: {
    finished: { type: "string", default: "100000" },
    small: { type: "string", default: "1000" },
    calls: { type: "string", default: "2000" },
  },
});
const [BIG, SMALL, CALLS] = [values.finished, values.small, values.calls].map(Number) as [
  number,
  number,
  number,
];
for (const n of [BIG, SMALL, CALLS])
  if (!Number.isInteger(n) || n < 1 || n > 1_000_000)
    throw new Error("--finished, --small and --calls are whole numbers from 1 to 1,000,000");

/** Milliseconds per store.stats() call with `n` tasks finished, run times spread 1 ms to 100 s. */
function perCall(n: number): number {
  const dir = mkdtempSync(path.join(tmpdir(), "conductor-bench-stats-"));
  try {
    fillStore(dir, n);
    const db = new DatabaseSync(path.join(dir, "orchestrator.db"));
    db.exec("UPDATE tasks SET state = 5, run_ms = 1 + abs(random() % 100000)");
    db.close();
    const store = new TaskStore(dir);
    try {
      for (let i = 0; i < 100; i++) store.stats();
      const t0 = performance.now();
      for (let i = 0; i < CALLS; i++) store.stats();
      return (performance.now() - t0) / CALLS;
    } finally {
      store.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const small = perCall(SMALL);
const big = perCall(BIG);
console.log(
  `GetStats store work, mean of ${CALLS} calls: ${big.toFixed(3)} ms at ${BIG.toLocaleString("en")} finished, ` +
    `${small.toFixed(3)} ms at ${SMALL.toLocaleString("en")}: ${(big / small).toFixed(2)}× (target ≤ 1.2×)`,
);
