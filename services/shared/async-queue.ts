/**
 * A push/pull queue turning callbacks into an async iterator, for server streams fed by
 * events. end() finishes it after what was pushed; fail() ends it with an error. It does not
 * refuse items: a producer that can wait keeps it bounded by `size` (the sum of `sizeOf` over
 * the items waiting) and `drained`.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  private error: Error | undefined;
  private readonly sizeOf: (item: T) => number;
  private drains: { below: number; resolve: () => void }[] = [];
  /** The size of what waits to be read. */
  size = 0;

  constructor(sizeOf: (item: T) => number = () => 1) {
    this.sizeOf = sizeOf;
  }

  push(item: T): void {
    if (this.ended) return;
    this.items.push(item);
    this.size += this.sizeOf(item);
    this.wake();
  }

  /** Resolves once what waits is smaller than `below`, or the queue has ended. */
  drained(below: number): Promise<void> {
    if (this.size < below || this.ended) return Promise.resolve();
    return new Promise((resolve) => this.drains.push({ below, resolve }));
  }

  end(): void {
    this.ended = true;
    this.wake();
    this.settleDrains();
  }

  fail(error: unknown): void {
    this.error = error instanceof Error ? error : new Error(String(error));
    this.end();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        this.size -= this.sizeOf(item);
        this.settleDrains();
        yield item;
        continue;
      }
      if (this.ended) {
        if (this.error !== undefined) throw this.error;
        return;
      }
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  private settleDrains() {
    if (this.drains.length === 0) return;
    const ready = this.drains.filter((d) => this.ended || this.size < d.below);
    this.drains = this.drains.filter((d) => !ready.includes(d));
    for (const d of ready) d.resolve();
  }

  private wake() {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }
}
