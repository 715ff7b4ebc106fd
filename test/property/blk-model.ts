// Property: well-formed requests behave like a byte array.
//
// Batches of valid reads, writes, flushes, GET_IDs, discards and write-zeroes,
// laid out in the many ways a driver may (header split, data in several buffers
// cut anywhere, status merged into the last data buffer, indirect tables,
// buffers straddling two regions, misaligned buffers that cache=none bounces),
// run against the in-memory disk and are checked against a plain Uint8Array
// model: every request succeeds (or fails as a read-only disk must), reads give
// the model's bytes, and the disk ends equal to the model. Requests of one batch
// run concurrently, so each gets its own lane of the disk.
import fc from 'fast-check';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP } from '../../src/blk/constants';
import { InstrumentedGuest, RegionSpec } from '../support/instrumented-memory';
import { fillPattern, makeHarness, testDisk } from './blk-harness';
import {
  F_INDIRECT, F_NEXT, F_WRITE, STATUS_NAMES, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
} from './virtio-model';

const DESC_OFF = 0x1000;
const AVAIL_OFF = 0x2000;
const USED_OFF = 0x3000;
const DATA_OFF = 0x4000;
const MEM_BYTES = 0x60000;
const DISK_BYTES = 1 << 18;
const MAX_BLOCKS = 4;
/** One region, or two adjacent ones that buffers cross. */
const LAYOUTS: RegionSpec[][] = [
  [{ gpa: 0, size: MEM_BYTES }],
  [{ gpa: 0, size: MEM_BYTES / 2 }, { gpa: MEM_BYTES / 2, size: MEM_BYTES / 2 }],
];

type Kind = 'read' | 'write' | 'flush' | 'getid' | 'discard' | 'wz';

interface Req {
  kind: Kind;
  blocks: number;
  pos: number;
  /** Where the data is cut into buffers (taken modulo its length). */
  cuts: number[];
  align: number;
  headerSplit: number;
  merged: boolean;
  indirect: boolean;
  idLen: number;
  segs: Array<{ pos: number; blocks: number; unmap: boolean }>;
  fill: number;
}

export interface ModelScenario {
  layout: number;
  sizeLog2: number;
  readOnly: boolean;
  lbs: number;
  direct: boolean;
  writeback: boolean;
  discard: boolean;
  writeZeroes: boolean;
  synchronous: boolean;
  bounceSlots: number;
  bounceSlotBytes: number;
  /** Where each batch starts allocating, so buffers cross the region boundary at varying points. */
  batches: Array<{ start: number; reqs: Req[] }>;
}

const reqArb = (): fc.Arbitrary<Req> => fc.record({
  kind: fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom<Kind>('read', 'write') },
    { weight: 1, arbitrary: fc.constantFrom<Kind>('flush', 'getid', 'discard', 'wz') },
  ),
  blocks: fc.nat(MAX_BLOCKS),
  pos: fc.nat(),
  cuts: fc.array(fc.nat(), { maxLength: 5 }),
  align: fc.constantFrom(1, 2, 8, 512, 4096),
  headerSplit: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 15 }) }),
  merged: fc.boolean(),
  indirect: fc.boolean(),
  idLen: fc.integer({ min: 1, max: 40 }),
  segs: fc.array(fc.record({ pos: fc.nat(), blocks: fc.nat(MAX_BLOCKS), unmap: fc.boolean() }), { minLength: 1, maxLength: 3 }),
  fill: fc.nat(),
});

export const modelScenarioArb = (): fc.Arbitrary<ModelScenario> => fc.record({
  layout: fc.nat(LAYOUTS.length - 1),
  sizeLog2: fc.integer({ min: 2, max: 4 }),
  readOnly: fc.oneof({ weight: 5, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  lbs: fc.constantFrom(512, 4096),
  direct: fc.boolean(),
  writeback: fc.boolean(),
  discard: fc.oneof({ weight: 5, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  writeZeroes: fc.oneof({ weight: 5, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  synchronous: fc.boolean(),
  bounceSlots: fc.integer({ min: 1, max: 3 }),
  bounceSlotBytes: fc.constantFrom(4096, 8192),
  batches: fc.array(fc.record({ start: fc.nat(0x2c000), reqs: fc.array(reqArb(), { minLength: 1, maxLength: 8 }) }), { minLength: 1, maxLength: 4 }),
});

interface Buf { addr: number; len: number; write: boolean }

interface Planned {
  req: Req;
  head: number;
  /** Disk byte range of reads and writes. */
  offset: number;
  bytes: number;
  data: Buf[];
  statusAddr: number;
  /** Discard / write-zeroes byte ranges. */
  ranges: Array<[number, number]>;
  idBuf?: Buf;
}

const TYPE: Record<Kind, number> = {
  read: VIRTIO_BLK_T_IN, write: VIRTIO_BLK_T_OUT, flush: VIRTIO_BLK_T_FLUSH, getid: VIRTIO_BLK_T_GET_ID,
  discard: VIRTIO_BLK_T_DISCARD, wz: VIRTIO_BLK_T_WRITE_ZEROES,
};

export async function runModelScenario(s: ModelScenario): Promise<void> {
  const regions = LAYOUTS[s.layout];
  const g = new InstrumentedGuest(regions);
  g.mem.recording = false;
  const size = 1 << s.sizeLog2;
  const lbs = s.lbs;
  const disk = testDisk({
    sizeBytes: DISK_BYTES, readOnly: s.readOnly, logicalBlockSize: lbs, direct: s.direct, directAlignment: lbs,
    discard: s.discard, writeZeroes: s.writeZeroes,
  });
  const diskBytes = new Uint8Array(DISK_BYTES);
  fillPattern(diskBytes, 7);
  const model = diskBytes.slice();
  const ring = { size, descAddr: DESC_OFF, availAddr: AVAIL_OFF, usedAddr: USED_OFF };
  const h = makeHarness(g, {
    ring, baseIdx: 0, eventIdx: false, indirect: true, disk, cache: { writeback: s.writeback }, diskBytes,
    synchronous: s.synchronous, bounceSlots: s.bounceSlots, bounceSlotBytes: s.bounceSlotBytes,
  });
  const avail = g.viewAt(AVAIL_OFF, 6 + 2 * size);
  const used = g.viewAt(USED_OFF, 6 + 8 * size);
  let availIdx = 0;
  const diskBlocks = DISK_BYTES / lbs;

  for (const batch of s.batches) {
    const reqs = batch.reqs.slice(0, size);
    let next = DATA_OFF + batch.start;
    const take = (len: number, align: number, oneRegion = false): number => {
      let at = Math.ceil(next / align) * align;
      // Indirect tables must lie in one region (back-end policy, see virtio-model.ts).
      const boundary = regions.length > 1 ? regions[1].gpa : MEM_BYTES;
      if (oneRegion && at < boundary && at + len > boundary) at = boundary;
      next = at + Math.max(len, 1);
      if (next > MEM_BYTES) throw new Error('test bug: batch does not fit in guest memory');
      return at;
    };
    const laneBlocks = Math.floor(diskBlocks / reqs.length);
    let slot = 0;
    const planned: Planned[] = reqs.map((req, lane) => {
      const laneStart = lane * laneBlocks;
      const blocks = Math.min(req.blocks, laneBlocks);
      const offset = (laneStart + (req.pos % (laneBlocks - blocks + 1))) * lbs;
      const bytes = req.kind === 'read' || req.kind === 'write' ? blocks * lbs : 0;
      const header = new Uint8Array(16);
      const hv = new DataView(header.buffer);
      hv.setUint32(0, TYPE[req.kind], true);
      hv.setBigUint64(8, BigInt(offset / 512), true);
      const bufs: Buf[] = [];
      const put = (content: Uint8Array, write: boolean, align = 8): Buf => {
        const b = { addr: take(content.length, align), len: content.length, write };
        g.write(b.addr, content);
        bufs.push(b);
        return b;
      };
      if (req.headerSplit > 0) {
        put(header.subarray(0, req.headerSplit), false);
        put(header.subarray(req.headerSplit), false);
      } else {
        put(header, false);
      }
      const p: Planned = { req, head: -1, offset, bytes, data: [], statusAddr: -1, ranges: [] };
      if (req.kind === 'read' || req.kind === 'write') {
        const content = new Uint8Array(bytes);
        if (req.kind === 'write') fillPattern(content, req.fill);
        else content.fill(0xcc);
        const cuts = [...new Set(req.cuts.map((c) => (bytes > 0 ? c % bytes : 0)).filter((c) => c > 0))].sort((a, b) => a - b);
        const edges = [0, ...cuts, bytes];
        for (let i = 0; i + 1 < edges.length; i++) {
          // A copy: merging the status into the last buffer must not change what the data is.
          if (edges[i + 1] > edges[i]) p.data.push({ ...put(content.subarray(edges[i], edges[i + 1]), req.kind === 'read', req.align) });
        }
      } else if (req.kind === 'getid') {
        p.idBuf = put(new Uint8Array(req.idLen).fill(0xcc), true);
      } else if (req.kind === 'discard' || req.kind === 'wz') {
        const segs = new Uint8Array(16 * req.segs.length);
        const sv = new DataView(segs.buffer);
        req.segs.forEach((seg, i) => {
          const n = Math.min(seg.blocks, laneBlocks);
          const start = (laneStart + (seg.pos % (laneBlocks - n + 1))) * lbs;
          sv.setBigUint64(16 * i, BigInt(start / 512), true);
          sv.setUint32(16 * i + 8, (n * lbs) / 512, true);
          sv.setUint32(16 * i + 12, req.kind === 'wz' && seg.unmap ? 1 : 0, true);
          p.ranges.push([start, start + n * lbs]);
        });
        put(segs, false);
      }
      // The status byte: its own buffer, or the last byte of the last device-writable one.
      const lastData = bufs[bufs.length - 1];
      if (req.merged && lastData.write && lastData.addr + lastData.len === next) {
        g.write(next, Uint8Array.of(0xee));
        lastData.len += 1;
        next += 1;
        p.statusAddr = lastData.addr + lastData.len - 1;
      } else {
        p.statusAddr = put(Uint8Array.of(0xee), true).addr;
      }
      // Descriptors: a direct chain if it fits in the table, else an indirect table.
      const descs = bufs.map((b, i) => ({ addr: b.addr, len: b.len, flags: (b.write ? F_WRITE : 0) | (i < bufs.length - 1 ? F_NEXT : 0) }));
      if (req.indirect || descs.length > size - slot) {
        const table = take(16 * descs.length, 16, true);
        descs.forEach((d, i) => writeDesc(g, table + 16 * i, d.addr, d.len, d.flags, i + 1));
        writeDesc(g, DESC_OFF + 16 * slot, table, 16 * descs.length, F_INDIRECT, 0);
        p.head = slot++;
      } else {
        descs.forEach((d, i) => writeDesc(g, DESC_OFF + 16 * (slot + i), d.addr, d.len, d.flags, slot + i + 1));
        p.head = slot;
        slot += descs.length;
      }
      return p;
    }).filter((p) => p.head < size);

    for (const p of planned) {
      avail.setUint16(4 + 2 * (availIdx % size), p.head, true);
      availIdx = (availIdx + 1) & 0xffff;
    }
    avail.setUint16(2, availIdx, true);
    const usedBefore = used.getUint16(2, true);
    h.drain();
    await h.settle();
    if (h.errors.length > 0) throw h.errors[0];
    if (h.queue.broken) throw new Error(`queue broken: ${h.queue.brokenReason}`);
    if (used.getUint16(2, true) !== ((usedBefore + planned.length) & 0xffff)) throw new Error('not every request was completed');
    const usedLen = new Map<number, number>();
    for (let i = 0; i < planned.length; i++) {
      const at = 4 + 8 * ((usedBefore + i) % size);
      usedLen.set(used.getUint32(at, true), used.getUint32(at + 4, true));
    }

    for (const p of planned) {
      const what = `${p.req.kind} of ${p.bytes} bytes at ${p.offset} (head ${p.head})`;
      const status = g.read(p.statusAddr, 1)[0];
      const len = usedLen.get(p.head);
      const expect = (st: number, n: number): void => {
        if (status !== st || len !== n) {
          throw new Error(`${what}: status ${STATUS_NAMES[status] ?? status} used length ${len}, expected ${STATUS_NAMES[st]} ${n}`);
        }
      };
      const changes = p.req.kind === 'write' || p.req.kind === 'discard' || p.req.kind === 'wz';
      if (changes && s.readOnly) {
        expect(VIRTIO_BLK_S_IOERR, 1);
        continue;
      }
      switch (p.req.kind) {
        case 'read': {
          expect(VIRTIO_BLK_S_OK, p.bytes + 1);
          let pos = p.offset;
          for (const b of p.data) {
            const got = g.read(b.addr, b.len);
            const want = model.subarray(pos, pos + b.len);
            const bad = got.findIndex((x, i) => x !== want[i]);
            if (bad >= 0) throw new Error(`${what}: byte ${pos - p.offset + bad} is ${got[bad]}, the disk model has ${want[bad]}`);
            pos += b.len;
          }
          break;
        }
        case 'write': {
          expect(VIRTIO_BLK_S_OK, 1);
          let pos = p.offset;
          for (const b of p.data) {
            model.set(g.read(b.addr, b.len), pos);
            pos += b.len;
          }
          break;
        }
        case 'flush':
          expect(VIRTIO_BLK_S_OK, 1);
          break;
        case 'getid': {
          const n = Math.min(20, p.idBuf!.len - (p.statusAddr === p.idBuf!.addr + p.idBuf!.len - 1 ? 1 : 0));
          expect(VIRTIO_BLK_S_OK, n + 1);
          const id = g.read(p.idBuf!.addr, n);
          const want = Buffer.alloc(20);
          want.write(disk.serial, 'latin1');
          if (!id.every((x, i) => x === want[i])) throw new Error(`${what}: id ${Buffer.from(id).toString('latin1')}`);
          break;
        }
        case 'discard':
        case 'wz':
          if (!(p.req.kind === 'discard' ? s.discard : s.writeZeroes)) {
            expect(VIRTIO_BLK_S_UNSUPP, 1);
            break;
          }
          expect(VIRTIO_BLK_S_OK, 1);
          // The in-memory engine zeroes every range operation (as a punched hole reads back).
          for (const [a, b] of p.ranges) model.fill(0, a, b);
          break;
      }
    }
  }
  const bad = diskBytes.findIndex((x, i) => x !== model[i]);
  if (bad >= 0) throw new Error(`disk byte ${bad} is ${diskBytes[bad]}, the model has ${model[bad]}`);
}

function writeDesc(g: InstrumentedGuest, at: number, addr: number, len: number, flags: number, next: number): void {
  const v = g.viewAt(at, 16);
  v.setBigUint64(0, BigInt(addr), true);
  v.setUint32(8, len, true);
  v.setUint16(12, flags, true);
  v.setUint16(14, next, true);
}

export const blkModelProperty = (): fc.IAsyncPropertyWithHooks<[ModelScenario]> =>
  fc.asyncProperty(modelScenarioArb(), runModelScenario);
