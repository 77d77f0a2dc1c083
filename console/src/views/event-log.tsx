// A task's event log, paged and virtualised: it opens on the newest page (ListTaskEvents),
// follows live events (WatchTask from the newest seq, reopened with backoff), and loads
// older pages as the reader scrolls up. Only the rows in view are in the DOM, so a history
// of 100,000 events opens as fast as one of ten.
import {
  Virtualizer,
  elementScroll,
  observeElementOffset,
  observeElementRect,
  type VirtualizerOptions,
} from "@tanstack/virtual-core";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import type { TaskEvent } from "../../../gen/conductor/v1/task_pb.js";
import { useApi } from "../context.ts";
import { aborted, errorText } from "../errors.ts";
import { follow } from "../follow.ts";
import { isFinal } from "../format.ts";
import { eventLines, type EventLine } from "./event-lines.ts";

/** Height of one line of the log, in CSS pixels (lines never wrap). */
export const ROW_PX = 20;
/** Events asked for per page. */
const PAGE = 500;

/** What the log knows of the history beyond the lines it holds. */
interface Window {
  lines: EventLine[];
  /** The oldest and newest seq read (0n: none yet). */
  oldest: bigint;
  newest: bigint;
  /** Older events remain on the server. */
  more: boolean;
  loading: boolean;
  /** The task's final state change has been read: nothing more will come. */
  ended: boolean;
}

/** Whether an event is the task's final state change. */
const ends = (e: TaskEvent): boolean =>
  e.kind.case === "stateChange" && isFinal(e.kind.value.state);

/** A window holding nothing yet. */
const empty = (): Window => ({
  lines: [],
  oldest: 0n,
  newest: 0n,
  more: false,
  loading: true,
  ended: false,
});

/** The log of task `taskId`; `onEvent` hears each live event (to refresh the task). */
export function EventLog({ taskId, onEvent }: { taskId: string; onEvent: (e: TaskEvent) => void }) {
  const api = useApi();
  const scroller = useRef<HTMLDivElement>(null);
  const win = useRef<Window>(empty());
  const shift = useRef(0); // lines put above the view: scroll down by as many
  const stick = useRef(true); // the reader is at the bottom: keep them there
  const [, setVersion] = useState(0);
  const [error, setError] = useState<string>();
  const [live, setLive] = useState(true);
  const bump = () => setVersion((v) => v + 1);
  const onEventRef = useRef(onEvent);
  onEventRef.current = onEvent;

  const options: VirtualizerOptions<HTMLDivElement, HTMLDivElement> = {
    count: win.current.lines.length,
    getScrollElement: () => scroller.current,
    estimateSize: () => ROW_PX,
    overscan: 20,
    observeElementRect,
    observeElementOffset,
    scrollToFn: elementScroll,
    onChange: bump,
  };
  const [virtualizer] = useState(() => new Virtualizer(options));
  virtualizer.setOptions(options);
  useLayoutEffect(() => virtualizer._didMount(), [virtualizer]);
  useLayoutEffect(() => {
    virtualizer._willUpdate();
    const el = scroller.current;
    if (!el) return;
    if (shift.current) {
      el.scrollTop += shift.current * ROW_PX;
      shift.current = 0;
    } else if (stick.current) {
      el.scrollTop = el.scrollHeight;
    }
  });

  useEffect(() => {
    const stop = new AbortController();
    const { signal } = stop;
    win.current = empty();
    stick.current = true;
    setLive(true);
    (async () => {
      const page = await api.listTaskEvents({ id: taskId, pageSize: PAGE }, { signal });
      const w = win.current;
      w.lines = page.events.flatMap(eventLines);
      w.oldest = page.events[0]?.seq ?? 0n;
      w.newest = page.events.at(-1)?.seq ?? 0n;
      w.more = page.more;
      w.loading = false;
      w.ended = page.events.some(ends);
      bump();
      // An ended task's log is whole: there is nothing to follow.
      if (!w.ended)
        await follow(
          (s) => api.watchTask({ id: taskId, afterSeq: w.newest }, { signal: s }),
          {
            message: ({ event }) => {
              if (!event || event.seq <= w.newest || w.ended) return;
              w.newest = event.seq;
              w.ended = ends(event);
              w.lines = w.lines.concat(eventLines(event));
              setError(undefined);
              bump();
              onEventRef.current(event);
            },
            broken: (e, ms) =>
              setError(`${errorText(e)}; reconnecting in ${(ms / 1000).toFixed(1)} s`),
          },
          signal,
        );
      if (!signal.aborted) setLive(false);
    })().catch((e: unknown) => {
      if (!aborted(e, signal)) setError(errorText(e));
    });
    return () => stop.abort();
  }, [api, taskId]);

  async function older() {
    const w = win.current;
    if (w.loading || !w.more) return;
    w.loading = true;
    bump();
    try {
      const page = await api.listTaskEvents({ id: taskId, beforeSeq: w.oldest, pageSize: PAGE });
      const lines = page.events.flatMap(eventLines);
      w.lines = lines.concat(w.lines);
      w.oldest = page.events[0]?.seq ?? w.oldest;
      w.more = page.more && page.events.length > 0;
      shift.current += lines.length;
    } catch (e) {
      setError(errorText(e));
    } finally {
      w.loading = false;
      bump();
    }
  }

  function scrolled() {
    const el = scroller.current;
    if (!el) return;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < ROW_PX * 2;
    if (el.scrollTop < ROW_PX * 10) older().catch(() => undefined);
  }

  const w = win.current;
  return (
    <div class="event-log">
      <p class="status">
        <span data-testid="log-status">
          {w.loading ? "loading…" : w.more ? "scroll up for older events" : "from the first event"}
          {" · "}
          {live ? "live" : "ended"}
        </span>
        {error && (
          <span class="error" role="alert">
            {" "}
            {error}
          </span>
        )}
      </p>
      <div class="log" ref={scroller} onScroll={scrolled} data-testid="event-log">
        <div style={{ height: `${virtualizer.getTotalSize()}px`, position: "relative" }}>
          {virtualizer.getVirtualItems().map((item) => {
            const line = w.lines[item.index];
            return line ? (
              <div
                key={item.key}
                class={`line ${line.kind}`}
                data-seq={String(line.seq)}
                style={{ top: `${item.start}px`, height: `${ROW_PX}px` }}
              >
                {line.text || " "}
              </div>
            ) : null;
          })}
        </div>
      </div>
    </div>
  );
}
