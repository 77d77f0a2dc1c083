/** Runs async functions one at a time, in the order they asked. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  /** Runs `fn` once every earlier caller is done; gives up waiting (only) when `signal` aborts. */
  async run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    const before = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((resolve) => (release = resolve));
    try {
      await untilAborted(before, signal);
      return await fn();
    } finally {
      // The next in line waits for both: its turn comes after ours, even when we gave up early.
      before.then(release, release);
    }
  }
}

function untilAborted(p: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return p;
  signal.throwIfAborted();
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
    const done = () => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    };
    p.then(done, done);
  });
}

/** A Mutex per key (a task id), dropped when no one holds or waits for it. */
export class KeyedMutex {
  private readonly held = new Map<string, { mutex: Mutex; users: number }>();

  async run<T>(key: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    let entry = this.held.get(key);
    if (!entry) this.held.set(key, (entry = { mutex: new Mutex(), users: 0 }));
    entry.users++;
    try {
      return await entry.mutex.run(fn, signal);
    } finally {
      if (--entry.users === 0) this.held.delete(key);
    }
  }
}
