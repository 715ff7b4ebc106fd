// One storage engine shared by all queues of an iothread (one io_uring per
// thread). Each queue takes a lane of slots; completions are routed to the
// lane's sink by slot number, without allocating.
import { EngineFactory, StorageEngine } from './engine';

/** Slots per lane: one per descriptor head of the largest queue. */
export const LANE_BITS = 10;
export const LANE_SIZE = 1 << LANE_BITS;

export interface CompletionSink {
  ioComplete(slotInLane: number, result: number): void;
}

export class EngineHub {
  readonly engine: StorageEngine;
  private readonly sinks: Array<CompletionSink | undefined>;

  constructor(makeEngine: EngineFactory, lanes: number) {
    this.sinks = new Array<CompletionSink | undefined>(lanes).fill(undefined);
    this.engine = makeEngine(lanes * LANE_SIZE, (slot, result) => this.route(slot, result));
  }

  private route(slot: number, result: number): void {
    // A sink detaches only with nothing in flight, so a completion always finds one.
    this.sinks[slot >>> LANE_BITS]!.ioComplete(slot & (LANE_SIZE - 1), result);
  }

  /** Take a free lane for `sink`; returns the slot number of its first slot. */
  attach(sink: CompletionSink): number {
    const lane = this.sinks.indexOf(undefined);
    if (lane < 0) throw new Error(`all ${this.sinks.length} engine lanes are in use`);
    this.sinks[lane] = sink;
    return lane * LANE_SIZE;
  }

  detach(slotBase: number): void {
    this.sinks[slotBase >>> LANE_BITS] = undefined;
  }

  close(): void {
    this.engine.close();
  }
}
