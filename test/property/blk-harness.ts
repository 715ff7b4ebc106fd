// One virtio-blk queue driven in-process for property tests: instrumented guest
// memory, the in-memory engine, and a drain loop like the data plane's
// (suppress kicks, take everything, allow kicks, re-check), with every pop and
// push of the queue recorded so a property can check that each head taken is
// returned exactly once.
import { BounceArea } from '../../src/blk/bounce';
import { BlkCacheState, BlkDisk } from '../../src/blk/disk';
import { BlkQueue } from '../../src/blk/request';
import { Logger } from '../../src/util/log';
import { SplitQueue } from '../../src/virtq/split';
import { InstrumentedGuest } from '../support/instrumented-memory';
import { MemoryEngine } from '../support/memory-engine';

/** Fake host address of the bounce area (page-aligned, apart from every region). */
export const BOUNCE_HOST = 0x7e0000000000;

export interface RingPlacement {
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
}

export interface HarnessOptions {
  ring: RingPlacement;
  /** Initial available and used index (and the queue's base index). */
  baseIdx: number;
  eventIdx: boolean;
  indirect: boolean;
  disk: BlkDisk;
  cache: BlkCacheState;
  diskBytes: Uint8Array;
  /** The engine completes inside submit(). */
  synchronous: boolean;
  /** Engine results to force, in order (see MemoryEngine.injected). */
  injected?: readonly number[];
  bounceSlots?: number;
  bounceSlotBytes?: number;
}

export type QueueEvent = { op: 'pop'; head: number } | { op: 'push'; head: number; len: number };

export interface Harness {
  g: InstrumentedGuest;
  queue: SplitQueue;
  blk: BlkQueue;
  engine: MemoryEngine;
  /** Every pop that returned a head and every push, in order. */
  events: QueueEvent[];
  /** Errors thrown out of the data path (handle, endBatch, completions). */
  errors: unknown[];
  /** Number of events before the pop that found the ring broken; -1 while it is not. */
  brokenAt: number;
  bounceBytes(): Uint8Array;
  /** Take every available head, like the data plane's drain. */
  drain(): void;
  /** Let completions run until nothing is in flight (bounded). */
  settle(): Promise<void>;
}

const MAX_SETTLE_TURNS = 20_000;

/** Build the queue; the caller has laid out the rings (at least the used index) in g first. */
export function makeHarness(g: InstrumentedGuest, o: HarnessOptions): Harness {
  const errors: unknown[] = [];
  const events: QueueEvent[] = [];
  const queue = new SplitQueue(g.mem, o.ring, o.baseIdx, { eventIdx: o.eventIdx, indirect: o.indirect });
  const pop = queue.pop.bind(queue);
  const push = queue.push.bind(queue);
  // Own properties shadow the prototype's: BlkQueue calls these through the instance.
  queue.pop = () => {
    const head = pop();
    if (head >= 0) events.push({ op: 'pop', head });
    else if (queue.broken && h.brokenAt < 0) h.brokenAt = events.length;
    return head;
  };
  queue.push = (head: number, len: number) => {
    events.push({ op: 'push', head, len });
    push(head, len);
  };

  let blk!: BlkQueue;
  const [first, ...rest] = g.regions;
  const engine = new MemoryEngine(o.diskBytes, first.bytes, (slot, result) => {
    try {
      blk.ioComplete(slot, result);
    } catch (e) {
      errors.push(e);
    }
  }, { alignment: o.disk.direct ? o.disk.directAlignment : 0, synchronous: o.synchronous });
  for (const r of rest) engine.addHostArea(r.hostAddr, r.bytes);
  engine.injected.push(...(o.injected ?? []));
  let bounce = new Uint8Array(0);
  const allocBounce = (size: number): BounceArea => {
    bounce = new Uint8Array(size);
    engine.addHostArea(BOUNCE_HOST, bounce);
    return { hostAddr: BOUNCE_HOST, bytes: bounce, free: () => {} };
  };
  blk = new BlkQueue({
    queue, mem: g.mem, disk: o.disk, cache: o.cache, engine, slotBase: 0, onCompleted: () => {}, log: new Logger(),
    allocBounce, bounceSlots: o.bounceSlots, bounceSlotBytes: o.bounceSlotBytes,
  });

  const guard = (fn: () => void): void => {
    try {
      fn();
    } catch (e) {
      errors.push(e);
    }
  };

  const h: Harness = {
    g, queue, blk, engine, events, errors, brokenAt: -1,
    bounceBytes: () => bounce,
    drain: () => guard(() => {
      queue.suppressKicks();
      for (;;) {
        for (let head = queue.pop(); head >= 0; head = queue.pop()) blk.handle(head);
        if (queue.broken || !queue.allowKicks()) break;
        queue.suppressKicks();
      }
      blk.endBatch();
      queue.publish();
    }),
    settle: async () => {
      for (let i = 0; i < MAX_SETTLE_TURNS && queue.inFlight > 0; i++) await new Promise((r) => setImmediate(r));
      guard(() => queue.publish());
    },
  };
  return h;
}

/** Disk description with test defaults. */
export function testDisk(over: Partial<BlkDisk>): BlkDisk {
  return {
    fd: 99, kind: 'file', sizeBytes: 1 << 18, readOnly: false, logicalBlockSize: 512, physicalBlockSize: 512,
    minIoSize: 0, optIoSize: 0, direct: false, directAlignment: 512, discard: true, writeZeroes: true,
    serial: 'fuzz-serial', ...over,
  };
}

/** Small deterministic byte pattern generator (xorshift32), to fill buffers from one seed. */
export function fillPattern(bytes: Uint8Array, seed: number): void {
  let x = (seed | 0) || 0x9e3779b9;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
}
