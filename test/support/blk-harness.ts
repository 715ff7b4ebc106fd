// A BlkQueue over fake guest memory and an in-memory storage engine, for unit
// tests of virtio-blk request handling: build chains, submit them in a batch,
// read back status bytes and used lengths.
import { strict as assert } from 'node:assert';
import { BounceArea } from '../../src/blk/bounce';
import { BlkCacheState, BlkDisk } from '../../src/blk/disk';
import { BlkQueue } from '../../src/blk/request';
import { SharedThrottle } from '../../src/blk/throttle';
import { Logger } from '../../src/util/log';
import { SplitQueue, VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE } from '../../src/virtq/split';
import { fakeGuest, makeAvailable, writeDesc } from './fake-memory';
import { MemoryEngine } from './memory-engine';

export const SIZE = 16;
export const DESC = 0x1000, AVAIL = 0x2000, USED = 0x3000;
export const HDR = 0x10000, DATA = 0x20000, STATUS = 0x30000;
export const DISK_BYTES = 1 << 20;
/** Fake host address of the bounce area the test allocator hands out (page-aligned, apart from guest memory). */
export const BOUNCE_HOST = 0x7e0000000000;

export interface Part { addr: number; len: number; write?: boolean }

export interface HarnessExtra {
  /** Engine acts like an O_DIRECT fd: throws on misaligned offsets, addresses, lengths. */
  engineAlignment?: number;
  bounceSlots?: number;
  bounceSlotBytes?: number;
  /** Split guest memory into two regions at this offset. */
  splitAt?: number;
  /** The queue's counters (blk/queue-metrics.ts layout); default: private to the queue. */
  metrics?: Float64Array;
  /** The queue's logger, with the context the data plane would give it. */
  log?: Logger;
  /** The export's I/O limits. */
  throttle?: SharedThrottle;
}

export function harness(diskOpts: Partial<BlkDisk> = {}, cache: BlkCacheState = { writeback: true }, extra: HarnessExtra = {}) {
  const g = fakeGuest(1 << 20, 0, extra.splitAt);
  const diskBytes = new Uint8Array(DISK_BYTES);
  const queue = new SplitQueue(g.mem, { size: SIZE, descAddr: DESC, availAddr: AVAIL, usedAddr: USED }, 0, { eventIdx: false, indirect: true });
  let completions = 0;
  const disk: BlkDisk = {
    fd: 99, kind: 'file', sizeBytes: DISK_BYTES, readOnly: false, logicalBlockSize: 512, physicalBlockSize: 512,
    minIoSize: 0, optIoSize: 0, direct: false, directAlignment: 512, discard: true, writeZeroes: true,
    serial: 'test-serial', ...diskOpts,
  };
  let blk!: BlkQueue;
  const engine = new MemoryEngine(diskBytes, g.bytes, (slot, result) => blk.ioComplete(slot, result), { alignment: extra.engineAlignment });
  const bounce = { bytes: new Uint8Array(0), allocations: 0, freed: 0 };
  const allocBounce = (size: number): BounceArea => {
    bounce.allocations++;
    bounce.bytes = new Uint8Array(size);
    engine.addHostArea(BOUNCE_HOST, bounce.bytes);
    return { hostAddr: BOUNCE_HOST, bytes: bounce.bytes, free: () => { bounce.freed++; } };
  };
  blk = new BlkQueue({
    queue, mem: g.mem, disk, cache, engine, slotBase: 0, onCompleted: () => completions++, log: extra.log ?? new Logger(),
    metrics: extra.metrics, allocBounce, bounceSlots: extra.bounceSlots, bounceSlotBytes: extra.bounceSlotBytes,
    throttle: extra.throttle,
  });

  /** Where the status byte of a chain is: the last byte of its last device-writable buffer. */
  const statusOf = (parts: Part[]): number => {
    const w = parts.filter((p) => p.write && p.len > 0);
    return w.length > 0 ? w[w.length - 1].addr + w[w.length - 1].len - 1 : STATUS;
  };

  /** Make several chains available (heads must leave room for their descriptors) and hand them to the queue as one batch. */
  function submitBatch(reqs: Array<{ head: number; parts: Part[] }>): void {
    for (const { head, parts } of reqs) {
      parts.forEach((p, i) => writeDesc(g.view, DESC, head + i, p.addr, p.len, (p.write ? WRITE : 0) | (i < parts.length - 1 ? NEXT : 0), head + i + 1));
    }
    // Status bytes start as 0xff so a test sees whether one was written.
    for (const { parts } of reqs) g.bytes[statusOf(parts)] = 0xff;
    makeAvailable(g.view, AVAIL, SIZE, reqs.map((r) => r.head));
    for (let head = queue.pop(); head >= 0; head = queue.pop()) blk.handle(head);
    blk.endBatch();
  }

  /** submitBatch, then wait until all are used. */
  async function runBatch(reqs: Array<{ head: number; parts: Part[] }>): Promise<Array<{ status: number; usedLen: number }>> {
    const before = queue.usedIdx;
    submitBatch(reqs);
    const want = (before + reqs.length) & 0xffff;
    for (let i = 0; i < 200 && queue.usedIdx !== want; i++) await new Promise((r) => setImmediate(r));
    assert.equal(queue.usedIdx, want, 'requests were never completed');
    queue.publish();
    const used = new Map<number, number>();
    for (let k = 0; k < reqs.length; k++) {
      const slot = (before + k) & (SIZE - 1);
      used.set(g.view.getUint32(USED + 4 + 8 * slot, true), g.view.getUint32(USED + 8 + 8 * slot, true));
    }
    return reqs.map(({ head, parts }) => {
      assert.ok(used.has(head), `head ${head} was not used`);
      return { status: g.bytes[statusOf(parts)], usedLen: used.get(head)! };
    });
  }

  /** Submit one chain made of `parts` as head 0 and wait until it is used. */
  async function run(parts: Part[], head = 0): Promise<{ status: number; usedLen: number }> {
    return (await runBatch([{ head, parts }]))[0];
  }

  function header(type: number, sector: number, at = HDR): void {
    g.view.setUint32(at, type, true);
    g.view.setUint32(at + 4, 0, true);
    g.view.setUint32(at + 8, sector % 2 ** 32, true);
    g.view.setUint32(at + 12, Math.floor(sector / 2 ** 32), true);
    g.bytes[STATUS] = 0xff;
  }
  return { g, disk, diskBytes, engine, blk, queue, submitBatch, run, runBatch, header, bounce, completions: () => completions };
}

export const req = (dataLen: number, dataWritable: boolean): Part[] => [
  { addr: HDR, len: 16 },
  { addr: DATA, len: dataLen, write: dataWritable },
  { addr: STATUS, len: 1, write: true },
];

/** Segments (struct virtio_blk_discard_write_zeroes) go here unless a test places them. */
export const SEGS = 0x11000;
export const DISK_SECTORS = DISK_BYTES / 512;
export type Seg = [sector: number, numSectors: number, flags?: number];

export function writeSegs(view: DataView, segs: Seg[], at = SEGS): number {
  segs.forEach(([sector, num, flags = 0], i) => {
    const o = at + 16 * i;
    view.setUint32(o, sector % 2 ** 32, true);
    view.setUint32(o + 4, Math.floor(sector / 2 ** 32), true);
    view.setUint32(o + 8, num, true);
    view.setUint32(o + 12, flags, true);
  });
  return 16 * segs.length;
}

/** A discard / write-zeroes chain: header, segments, status. */
export const dwz = (segLen: number): Part[] => [
  { addr: HDR, len: 16 },
  { addr: SEGS, len: segLen },
  { addr: STATUS, len: 1, write: true },
];

export const direct = (align: number, lbs = align): Partial<BlkDisk> => ({ direct: true, directAlignment: align, logicalBlockSize: lbs });
