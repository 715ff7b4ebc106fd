// One storage engine shared by all queues of an iothread (one io_uring per
// thread). Each started queue takes a contiguous lane of slots, one per
// descriptor head; completions are routed to the lane's sink by slot number,
// without allocating.
import { EngineFactory, StorageEngine } from './engine';

/** Lanes are carved in granules so routing is a shift and two array loads. */
const GRANULE_BITS = 6;
const GRANULE = 1 << GRANULE_BITS;
/** Most slots one engine offers (the addon's limit). */
export const MAX_ENGINE_SLOTS = 65536;

export interface CompletionSink {
  ioComplete(slotInLane: number, result: number): void;
}

export class EngineHub {
  readonly engine: StorageEngine;
  /** Sink and first slot of each lane, by lane number; lane numbers are reused. */
  private readonly sinks: Array<CompletionSink | undefined> = [];
  private readonly bases: number[] = [];
  /** Lane number of each granule, -1 when free. */
  private readonly laneOfGranule: Int32Array;

  /** `round` hears when a round of completions starts and ends (see EngineFactory). */
  constructor(makeEngine: EngineFactory, slots: number, private readonly round?: { begin(): void; end(): void }) {
    const granules = Math.ceil(Math.min(slots, MAX_ENGINE_SLOTS) / GRANULE);
    this.laneOfGranule = new Int32Array(granules).fill(-1);
    this.engine = makeEngine(granules * GRANULE, (slot, result) => this.route(slot, result),
      round === undefined ? undefined : () => round.end());
  }

  private route(slot: number, result: number): void {
    this.round?.begin();
    // A sink detaches only with nothing in flight, so a completion always finds one.
    const lane = this.laneOfGranule[slot >>> GRANULE_BITS];
    this.sinks[lane]!.ioComplete(slot - this.bases[lane], result);
  }

  /** Take `size` contiguous slots for `sink`; returns the first slot, or throws if the engine is full. */
  attach(sink: CompletionSink, size: number): number {
    const need = Math.ceil(size / GRANULE);
    const map = this.laneOfGranule;
    for (let start = 0; start + need <= map.length; start++) {
      let free = 0;
      while (free < need && map[start + free] === -1) free++;
      if (free < need) {
        start += free;
        continue;
      }
      let lane = this.sinks.indexOf(undefined);
      if (lane < 0) lane = this.sinks.length;
      this.sinks[lane] = sink;
      this.bases[lane] = start * GRANULE;
      map.fill(lane, start, start + need);
      return start * GRANULE;
    }
    throw new Error(`the iothread's storage engine has no ${size} free slots left (${map.length * GRANULE} in all)`);
  }

  detach(slotBase: number): void {
    const lane = this.laneOfGranule[slotBase >>> GRANULE_BITS];
    if (lane < 0) return;
    this.sinks[lane] = undefined;
    for (let g = slotBase >>> GRANULE_BITS; g < this.laneOfGranule.length && this.laneOfGranule[g] === lane; g++) {
      this.laneOfGranule[g] = -1;
    }
  }

  close(): void {
    this.engine.close();
  }
}
