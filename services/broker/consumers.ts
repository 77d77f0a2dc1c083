import type { Message } from "../../gen/conductor/v1/broker_pb.js";
import { AsyncQueue } from "../shared/async-queue.ts";
import type { Consumer, Pending } from "./mailroom.ts";

/** A Subscribe stream: gets messages while fewer than `prefetch` wait for their Ack. */
export class StreamConsumer implements Consumer {
  readonly queue = new AsyncQueue<Message>();
  private readonly prefetch: number;
  private inflight = 0;

  constructor(prefetch: number) {
    this.prefetch = prefetch;
  }

  room(): number {
    return this.prefetch - this.inflight;
  }

  take(message: Message): void {
    this.inflight++;
    this.queue.push(message);
  }

  release(): void {
    this.inflight--;
  }
}

/** A waiting Receive: takes up to `max` messages from one dispatch round, then is done. */
export class PullConsumer implements Consumer {
  readonly taken: Message[] = [];
  readonly done: Promise<Message[]>;
  private readonly max: number;
  private settled = false;
  private resolve!: (messages: Message[]) => void;

  constructor(max: number) {
    this.max = max;
    this.done = new Promise((resolve) => (this.resolve = resolve));
  }

  room(): number {
    return this.settled ? 0 : this.max - this.taken.length;
  }

  take(message: Message): void {
    this.taken.push(message);
  }

  release(): void {}

  /** Ends the wait with what it has (also with nothing, on timeout or cancel). */
  settle(): void {
    if (this.settled) return;
    this.settled = true;
    this.resolve(this.taken);
  }
}

/** A Request waiting for the one reply that carries its correlation id, from the agent asked. */
export class ReplyWaiter implements Consumer {
  readonly correlationId: string;
  readonly from: string;
  readonly done: Promise<{ message: Message; pending: Pending }>;
  private got = false;
  private resolve!: (r: { message: Message; pending: Pending }) => void;

  constructor(correlationId: string, from: string) {
    this.correlationId = correlationId;
    this.from = from;
    this.done = new Promise((resolve) => (this.resolve = resolve));
  }

  room(): number {
    return this.got ? 0 : 1;
  }

  wants(p: Pending): boolean {
    return p.correlationId === this.correlationId && p.sender === this.from;
  }

  take(message: Message, pending: Pending): void {
    this.got = true;
    this.resolve({ message, pending });
  }

  release(): void {}
}
