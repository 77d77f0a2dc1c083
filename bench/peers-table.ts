// The printout of bench/peers.ts: one row per figure, with its ratio, target and verdict.
import { median } from "./peers-common.ts";

/** One figure: Conductor's, its peer's, their ratio, the target and whether it is met. */
export interface Row {
  figure: string;
  conductor: number;
  peer: number;
  ratio: number;
  target: string;
  pass: boolean | undefined;
}

/** Conductor's median against the peer's: higher is better, the ratio at least `min`. */
export function ratioRow(
  figure: string,
  c: number[],
  b: number[],
  target: string,
  min: number,
): Row {
  const ratio = median(c) / median(b);
  return {
    figure,
    conductor: median(c),
    peer: median(b),
    ratio,
    target,
    pass: target ? ratio >= min : undefined,
  };
}

/** A latency: Conductor's median of runs against the peer's; passes at most `maxMs`. */
export function latencyRow(figure: string, c: number[], b: number[], maxMs: number): Row {
  const ok = Number.isFinite(maxMs);
  return {
    figure,
    conductor: median(c),
    peer: median(b),
    ratio: median(c) / median(b),
    target: ok ? `≤ ${maxMs} ms` : "",
    pass: ok ? median(c) <= maxMs : undefined,
  };
}

/** Conductor at many queued (conductor) against few (peer): the slowdown at most 1.2×. */
export function flatRow(
  figure: string,
  big: number[],
  small: number[],
  kind: "rate" | "time",
): Row {
  const slowdown = kind === "rate" ? median(small) / median(big) : median(big) / median(small);
  return {
    figure,
    conductor: median(big),
    peer: median(small),
    ratio: slowdown,
    target: "slowdown ≤ 1.2×",
    pass: slowdown <= 1.2,
  };
}

/** Prints the rows as a table under `title` (lines) on stdout. */
export function printTable(title: string[], rows: Row[]): void {
  const num = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
  const table = [
    ["figure", "Conductor", "peer", "ratio", "target", ""],
    ...rows.map((r) => [
      r.figure,
      num(r.conductor),
      num(r.peer),
      `${num(r.ratio)}×`,
      r.target,
      r.pass === undefined ? "" : r.pass ? "PASS" : "FAIL",
    ]),
  ];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  const line = (row: string[]) =>
    row
      .map((cell, i) => (i === 0 || i >= 4 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
      .join("  ")
      .trimEnd();
  console.log(`\n${title.join("\n")}`);
  console.log(line(table[0]!));
  for (const row of table.slice(1)) console.log(line(row));
}
