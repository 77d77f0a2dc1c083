// Charts of throughput, queue depth and spend, from GetStats sampled every few seconds
// while the console is open (the Orchestrator keeps no history of them; Prometheus does).
import { createContext } from "preact";
import { useContext, useEffect, useRef, useState } from "preact/hooks";
import uPlot, { type AlignedData, type Options } from "uplot";
import type { Orchestrator } from "../api.ts";
import { usePoll } from "../context.ts";
import { count, usd } from "../format.ts";

/** How often GetStats is sampled, and how many samples are kept (an hour's worth). */
export const SAMPLE_MS = 3_000;
const KEEP = 1_200;

/** One GetStats sample. */
export interface StatsSample {
  /** Seconds since the epoch. */
  at: number;
  /** Tasks ended so far (succeeded, failed, cancelled, timed out). */
  ended: number;
  queued: number;
  running: number;
  costUsd: number;
}

/** The samples so far and the last error, for the charts view. */
export interface Samples {
  list: StatsSample[];
  error: string | undefined;
}

/** The App's samples (provided by App). */
export const StatsContext = createContext<Samples>({ list: [], error: undefined });

const ENDED = [
  "TASK_STATE_SUCCEEDED",
  "TASK_STATE_FAILED",
  "TASK_STATE_CANCELLED",
  "TASK_STATE_TIMED_OUT",
];

/** Samples GetStats every SAMPLE_MS while the App is shown. */
export function useStatsSampler(api: Orchestrator): Samples {
  const polled = usePoll(
    async (signal): Promise<StatsSample> => {
      const s = await api.getStats({}, { signal });
      const n = (state: string) => Number(s.tasksByState[state] ?? 0n);
      return {
        at: Date.now() / 1000,
        ended: ENDED.reduce((sum, state) => sum + n(state), 0),
        queued: n("TASK_STATE_QUEUED") + n("TASK_STATE_SCHEDULED"),
        running: n("TASK_STATE_RUNNING"),
        costUsd: s.costUsdTotal,
      };
    },
    SAMPLE_MS,
    [api],
  );
  const [list, setList] = useState<StatsSample[]>([]);
  // Each read is a new sample (a failed one keeps the last): kept, the oldest beyond KEEP dropped.
  useEffect(() => {
    const sample = polled.value;
    if (sample) setList((old) => [...old.slice(-(KEEP - 1)), sample]);
  }, [polled.value]);
  return { list, error: polled.error };
}

/** The charts view, `/charts`. */
export function ChartsView() {
  const { list, error } = useContext(StatsContext);
  const at = list.map((s) => s.at);
  // Tasks ended per minute over each interval between samples (none for the first).
  const throughput = list.map((s, i) => {
    const prev = list[i - 1];
    return prev ? ((s.ended - prev.ended) * 60) / Math.max(0.001, s.at - prev.at) : null;
  });
  const last = list.at(-1);
  return (
    <section class="charts">
      <h1>Charts</h1>
      <p class="note">
        Sampled from GetStats every {SAMPLE_MS / 1000} s while this console is open
        {last &&
          ` · ${count(last.ended)} ended · ${count(last.queued)} queued · ${count(last.running)} running · ${usd(last.costUsd)} spent`}
      </p>
      {error && <p class="error">{error}</p>}
      <Chart
        title="Throughput (tasks ended per minute)"
        data={[at, throughput]}
        label="tasks/min"
        color="#2a7"
      />
      <Chart
        title="Queue depth (queued and scheduled) and running"
        data={[at, list.map((s) => s.queued), list.map((s) => s.running)]}
        label="queued"
        label2="running"
        color="#c80"
        color2="#36c"
      />
      <Chart
        title="Spend (total, US dollars)"
        data={[at, list.map((s) => s.costUsd)]}
        label="USD"
        color="#a3c"
      />
    </section>
  );
}

interface ChartProps {
  title: string;
  data: AlignedData;
  label: string;
  color: string;
  label2?: string;
  color2?: string;
}

/** A chart's frame: its line once there are two samples to draw one between. */
function Chart(props: ChartProps) {
  return (
    <figure class="chart">
      <figcaption>{props.title}</figcaption>
      {props.data[0].length < 2 ? <p class="note">Collecting samples…</p> : <Plot {...props} />}
    </figure>
  );
}

/** One uPlot line chart, made once and fed new data on each render. */
function Plot({ data, label, color, label2, color2 }: ChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot>(undefined);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const opts: Options = {
      width: Math.max(300, el.clientWidth),
      height: 160,
      series: [
        {},
        { label, stroke: color, width: 2, spanGaps: true },
        ...(label2 ? [{ label: label2, stroke: color2 ?? "#333", width: 2 }] : []),
      ],
      axes: [{}, { size: 60 }],
      scales: { x: { time: true } },
    };
    plot.current = new uPlot(opts, data, el);
    const resize = () =>
      plot.current?.setSize({ width: Math.max(300, el.clientWidth), height: 160 });
    window.addEventListener("resize", resize);
    return () => {
      window.removeEventListener("resize", resize);
      plot.current?.destroy();
      plot.current = undefined;
    };
    // The chart is made once; data flows in below.
  }, []);
  useEffect(() => plot.current?.setData(data), [data]);
  return <div ref={box} />;
}
