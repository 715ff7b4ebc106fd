// Property: a hostile guest cannot make the virtio-blk data path misbehave.
//
// A scenario is a guest memory layout, a queue, a set of requests laid out as
// descriptor chains (mostly well-formed, then corrupted by mutations: loops,
// next out of range, bad indirect tables, nested indirect, addresses outside or
// straddling regions, zero and 4 GiB lengths, flipped directions), and rounds
// of the available ring (duplicate heads, heads out of range, the index racing
// ahead). The back-end runs it over instrumented memory and must:
// - never throw;
// - return every head it took exactly once;
// - touch guest memory only inside regions (recorded accesses, guard bytes,
//   engine iovecs);
// and, when the guest did not alias the device's writes with what the device
// reads (then the outcome is well defined):
// - answer each chain as the reference model (virtio-model.ts) allows: used
//   length 0 and nothing written for a chain it must refuse, otherwise a status
//   byte at the last device-writable byte with the matching used length;
// - write nothing outside device-writable buffers and the used ring;
// - consume the available ring in order, and break the ring only for a reason
//   the guest really gave.
import fc from 'fast-check';
import { BlkDisk } from '../../src/blk/disk';
import { InstrumentedGuest, RegionSpec } from '../support/instrumented-memory';
import { BOUNCE_HOST, Harness, fillPattern, makeHarness, testDisk } from './blk-harness';
import {
  DeviceModel, Expectation, F_INDIRECT, F_NEXT, F_WRITE, ModelChain, Range, STATUS_NAMES, VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, expectFor,
  modelWalk, overlaps, requestType, typeName,
} from './virtio-model';

// ---- memory layouts -------------------------------------------------------------

const DESC_OFF = 0x1000;
const AVAIL_OFF = 0x2000;
const USED_OFF = 0x3000;
const DATA_OFF = 0x4000;
const DISK_BYTES = 1 << 18;

/** One region; two adjacent ones (buffers may straddle them); the same plus a hole and a third; one not at 0. */
const LAYOUTS: RegionSpec[][] = [
  [{ gpa: 0, size: 0x20000 }],
  [{ gpa: 0, size: 0x10000 }, { gpa: 0x10000, size: 0x8000 }],
  [{ gpa: 0, size: 0x10000 }, { gpa: 0x10000, size: 0x8000 }, { gpa: 0x20000, size: 0x4000 }],
  [{ gpa: 0x100000, size: 0x20000 }],
];

// ---- scenario ---------------------------------------------------------------------

/** Where a buffer goes: fresh memory (most), across a region's end, outside memory, or over anything. */
type Place =
  | { kind: 'fresh'; align: number }
  | { kind: 'straddle'; region: number; before: number }
  | { kind: 'outside'; addr: bigint }
  | { kind: 'alias'; offset: number };

interface BufSpec { len: number; write: boolean; place: Place }

interface ReqSpec {
  type: number;
  sector: bigint;
  /** If set, the sector is instead chosen so the data ends this many sectors past the disk's end. */
  endDelta: number | null;
  /** Header: one buffer, split in two at `headerSplit` (1..15), or a wrong length. */
  headerSplit: number;
  headerLen: number;
  headerWritable: boolean;
  data: BufSpec[];
  segs: Array<{ sector: bigint; num: number; flags: number }>;
  status: 'separate' | 'merged' | 'none' | 'readable' | 'empty' | 'first';
  indirect: boolean;
  fill: number;
}

/** A descriptor field set to a hostile value; 'tableLen' sets an indirect head's length to its table's plus `value`. */
interface Mutation { table: 'main' | 'indirect'; which: number; entry: number; field: 'addr' | 'len' | 'flags' | 'next' | 'tableLen'; value: bigint }

type HeadPick = { kind: 'req'; i: number } | { kind: 'any'; head: number };
/**
 * A round of the available ring: heads to offer, or the index moved by `by`.
 * `scribble` rewrites descriptors first, possibly under requests still in flight
 * (a request parked for a bounce slot is parsed again later).
 */
type Round = { kind: 'offer'; heads: HeadPick[]; settle: boolean; scribble: Mutation[] } | { kind: 'jump'; by: number };

export interface Scenario {
  layout: number;
  sizeLog2: number;
  baseIdx: number;
  eventIdx: boolean;
  indirect: boolean;
  disk: Partial<BlkDisk>;
  writeback: boolean;
  synchronous: boolean;
  injected: number[];
  bounceSlots: number;
  bounceSlotBytes: number;
  reqs: ReqSpec[];
  mutations: Mutation[];
  rounds: Round[];
}

const place = (): fc.Arbitrary<Place> => fc.oneof(
  { weight: 60, arbitrary: fc.constantFrom(1, 2, 8, 512, 4096).map((align) => ({ kind: 'fresh' as const, align })) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('straddle' as const), region: fc.nat(2), before: fc.integer({ min: 1, max: 600 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('outside' as const), addr: hostileAddr() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('alias' as const), offset: fc.nat(0x8000) }) },
);

function hostileAddr(): fc.Arbitrary<bigint> {
  return fc.oneof(
    fc.constantFrom(0n, 0x18000n, 0x1fff8n, 0x24000n, 0xfff00n, 0x120000n, 2n ** 32n, 2n ** 53n - 16n, 2n ** 53n,
      2n ** 63n, 2n ** 64n - 16n, 0xffffffff00000000n),
    fc.bigInt({ min: 0n, max: 0x130000n }),
  );
}

const dataLen = (): fc.Arbitrary<number> => fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 1, max: 16 }).map((n) => 512 * n) },
  { weight: 1, arbitrary: fc.constantFrom(0, 1, 511, 513) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 8192 }) },
);

/** Sectors: mostly 4 KiB-aligned inside the disk, some anywhere near it, a few far beyond. */
const sectorArb = (): fc.Arbitrary<bigint> => fc.oneof(
  { weight: 6, arbitrary: fc.nat(DISK_BYTES / 4096).map((n) => BigInt(8 * n)) },
  { weight: 3, arbitrary: fc.bigInt({ min: 0n, max: BigInt(DISK_BYTES / 512 + 16) }) },
  // Just inside the end, so that a few blocks more run past it.
  { weight: 2, arbitrary: fc.nat(16).map((k) => BigInt(DISK_BYTES / 512 - k)) },
  { weight: 1, arbitrary: fc.constantFrom(2n ** 52n, 2n ** 55n - 1n, 2n ** 64n - 1n, BigInt(DISK_BYTES / 512)) },
);

const bufSpec = (write: fc.Arbitrary<boolean>, len: fc.Arbitrary<number>, where = place()): fc.Arbitrary<BufSpec> =>
  fc.record({ len, write, place: where });

const TYPES = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES];

const reqSpec = (): fc.Arbitrary<ReqSpec> => fc.record({
  type: fc.oneof({ weight: 12, arbitrary: fc.constantFrom(...TYPES) }, { weight: 1, arbitrary: fc.nat({ max: 0xffffffff }) }),
  sector: sectorArb(),
  endDelta: fc.oneof({ weight: 5, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.integer({ min: -2, max: 2 }) }),
  headerSplit: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 15 }) }),
  headerLen: fc.oneof({ weight: 12, arbitrary: fc.constant(16) }, { weight: 1, arbitrary: fc.constantFrom(0, 8, 15, 17, 32) }),
  headerWritable: fc.oneof({ weight: 20, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  data: fc.oneof(
    { weight: 10, arbitrary: fc.array(bufSpec(fc.oneof({ weight: 15, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }), dataLen()), { maxLength: 4 }) },
    // Many small buffers: more data segments than the engine takes at once.
    { weight: 1, arbitrary: fc.array(bufSpec(fc.constant(true), fc.integer({ min: 1, max: 48 }), fc.constant<Place>({ kind: 'fresh', align: 1 })), { minLength: 40, maxLength: 80 }) },
  ),
  segs: fc.array(fc.record({
    sector: sectorArb(),
    num: fc.oneof(
      { weight: 6, arbitrary: fc.nat(8).map((n) => 8 * n) },
      { weight: 2, arbitrary: fc.nat(64) },
      { weight: 1, arbitrary: fc.constantFrom(0xffffffff, DISK_BYTES / 512 + 1) },
    ),
    flags: fc.oneof({ weight: 12, arbitrary: fc.constantFrom(0, 1) }, { weight: 1, arbitrary: fc.nat({ max: 0xffffffff }) }),
  }), { maxLength: 18 }),
  status: fc.oneof(
    { weight: 12, arbitrary: fc.constant('separate' as const) },
    { weight: 3, arbitrary: fc.constant('merged' as const) },
    { weight: 1, arbitrary: fc.constantFrom('none' as const, 'readable' as const, 'empty' as const, 'first' as const) },
  ),
  indirect: fc.oneof({ weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  fill: fc.nat(),
});

const mutation = (): fc.Arbitrary<Mutation> => fc.record({
  table: fc.constantFrom('main' as const, 'indirect' as const),
  which: fc.nat(15),
  entry: fc.nat(127),
}).chain((m) => fc.oneof(
  hostileAddr().map((value) => ({ ...m, field: 'addr' as const, value })),
  fc.oneof(
    fc.constantFrom(0, 1, 8, 15, 16, 17, 24, 48, 4096, 16 * 1025, 0x7fffffff, 0x80000000, 0xfffffff0, 0xffffffff),
    fc.nat({ max: 0xffffffff }),
  ).map((v) => ({ ...m, field: 'len' as const, value: BigInt(v) })),
  fc.oneof(fc.nat(7), fc.nat(0xffff)).map((v) => ({ ...m, field: 'flags' as const, value: BigInt(v) })),
  fc.oneof(fc.nat(18), fc.nat(0xffff)).map((v) => ({ ...m, field: 'next' as const, value: BigInt(v) })),
  // Just off the table's real size: the device must not read past what the guest gave it.
  fc.constantFrom(-16n, -8n, -1n, 1n, 8n, 16n, 32n).map((value) => ({ ...m, field: 'tableLen' as const, value })),
));

const headPick = (): fc.Arbitrary<HeadPick> => fc.oneof(
  { weight: 40, arbitrary: fc.nat(15).map((i) => ({ kind: 'req' as const, i })) },
  { weight: 1, arbitrary: fc.oneof({ weight: 3, arbitrary: fc.nat(20) }, { weight: 1, arbitrary: fc.nat(0xffff) }).map((head) => ({ kind: 'any' as const, head })) },
);

const round = (): fc.Arbitrary<Round> => fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constant('offer' as const), heads: fc.array(headPick(), { minLength: 1, maxLength: 16 }), settle: fc.boolean(),
      scribble: fc.oneof({ weight: 12, arbitrary: fc.constant<Mutation[]>([]) }, { weight: 1, arbitrary: fc.array(mutation(), { minLength: 1, maxLength: 3 }) }),
    }),
  },
  // The available index moves by more than the queue holds (or backwards).
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('jump' as const), by: fc.integer({ min: 17, max: 0xffff }) }) },
);

export const scenarioArb = (): fc.Arbitrary<Scenario> => fc.record({
  layout: fc.nat(LAYOUTS.length - 1),
  sizeLog2: fc.oneof({ weight: 1, arbitrary: fc.nat(1) }, { weight: 4, arbitrary: fc.integer({ min: 2, max: 4 }) }),
  baseIdx: fc.oneof(fc.constantFrom(0, 0xfffe, 0xffff), fc.nat(0xffff)),
  eventIdx: fc.boolean(),
  indirect: fc.oneof({ weight: 6, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  disk: fc.record({
    readOnly: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    logicalBlockSize: fc.constantFrom(512, 4096),
    direct: fc.boolean(),
    discard: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    writeZeroes: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  }).chain((d) => fc.constantFrom(...[512, 4096].filter((a) => a <= d.logicalBlockSize))
    .map((directAlignment) => ({ ...d, directAlignment }))),
  writeback: fc.boolean(),
  synchronous: fc.boolean(),
  injected: fc.oneof({ weight: 3, arbitrary: fc.constant<number[]>([]) }, { weight: 1, arbitrary: fc.array(fc.constantFrom<number>(0, 0, -5, -95, 1), { maxLength: 6 }) }),
  bounceSlots: fc.integer({ min: 1, max: 3 }),
  bounceSlotBytes: fc.constantFrom(4096, 8192),
  reqs: fc.array(reqSpec(), { minLength: 1, maxLength: 8 }),
  mutations: fc.oneof({ weight: 1, arbitrary: fc.constant<Mutation[]>([]) }, { weight: 3, arbitrary: fc.array(mutation(), { maxLength: 4 }) }),
  rounds: fc.array(round(), { minLength: 1, maxLength: 3 }),
});

// ---- laying the scenario out in guest memory -----------------------------------------

interface Placed { addr: bigint; len: number; write: boolean }

/** Hands out fresh guest memory from the data areas of the regions, in order. */
class Allocator {
  private area = 0;
  private next: number;
  constructor(private readonly areas: Array<[number, number]>) { this.next = areas[0][0]; }

  take(len: number, align: number): number {
    // Huge lengths get a token reservation: walk() refuses them anyway.
    const want = Math.min(len, 0x2000);
    for (;;) {
      const [start, end] = this.areas[this.area];
      const at = Math.ceil(Math.max(this.next, start) / align) * align;
      if (at + want <= end) {
        this.next = at + want;
        return at;
      }
      // Out of room: start over (buffers may then overlap; the property only gets weaker).
      this.area = (this.area + 1) % this.areas.length;
      this.next = this.areas[this.area][0];
    }
  }
}

interface Layout {
  g: InstrumentedGuest;
  base: number;
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
  /** Head of each request that could be laid out (-1: did not fit in the table). */
  heads: number[];
  indirectTables: Array<{ addr: number; count: number; slot: number }>;
}

function placeBuf(g: InstrumentedGuest, alloc: Allocator, spec: BufSpec, layout: RegionSpec[]): bigint {
  const p = spec.place;
  switch (p.kind) {
    case 'fresh': return BigInt(alloc.take(Math.max(spec.len, 1), p.align));
    case 'straddle': {
      const r = layout[Math.min(p.region, layout.length - 1)];
      return BigInt(r.gpa + r.size - Math.min(p.before, Math.max(1, spec.len - 1)));
    }
    case 'outside': return p.addr;
    case 'alias': return BigInt(g.regions[0].gpa + p.offset);
  }
}

/** Write `bytes` at guest address `addr` wherever it is guest memory (a buffer may straddle regions or leave memory). */
function poke(g: InstrumentedGuest, addr: bigint, bytes: Uint8Array): void {
  for (let i = 0; i < bytes.length; i++) {
    const a = addr + BigInt(i);
    if (a >= 2n ** 53n) return;
    const r = g.regionOf(Number(a), 1);
    if (r !== undefined) r.bytes[Number(a) - r.gpa] = bytes[i];
  }
}

function writeDescAt(g: InstrumentedGuest, at: number, d: { addr: bigint; len: number; flags: number; next: number }): void {
  const v = g.viewAt(at, 16);
  v.setBigUint64(0, d.addr & 0xffffffffffffffffn, true);
  v.setUint32(8, d.len >>> 0, true);
  v.setUint16(12, d.flags & 0xffff, true);
  v.setUint16(14, d.next & 0xffff, true);
}

/** The chain a request spec describes: buffers, and the device-readable bytes (header, then payload) to fill them with. */
function chainOf(r: ReqSpec): { bufs: BufSpec[]; readable: Uint8Array } {
  const fresh: Place = { kind: 'fresh', align: 8 };
  const bufs: BufSpec[] = [];
  if (r.headerSplit > 0 && r.headerLen === 16) {
    bufs.push({ len: r.headerSplit, write: r.headerWritable, place: fresh }, { len: 16 - r.headerSplit, write: r.headerWritable, place: fresh });
  } else if (r.headerLen > 0) {
    bufs.push({ len: r.headerLen, write: r.headerWritable, place: fresh });
  }
  let payload = new Uint8Array(0);
  if (r.type === VIRTIO_BLK_T_DISCARD || r.type === VIRTIO_BLK_T_WRITE_ZEROES) {
    payload = new Uint8Array(16 * r.segs.length);
    const v = new DataView(payload.buffer);
    r.segs.forEach((s, i) => {
      v.setBigUint64(16 * i, s.sector, true);
      v.setUint32(16 * i + 8, s.num, true);
      v.setUint32(16 * i + 12, s.flags, true);
    });
    if (payload.length > 0) bufs.push({ len: payload.length, write: false, place: fresh });
  } else {
    for (const d of r.data) bufs.push(r.type === VIRTIO_BLK_T_OUT ? { ...d, write: !d.write } : d);
  }
  const status: BufSpec = { len: 1, write: true, place: fresh };
  switch (r.status) {
    case 'separate': bufs.push(status); break;
    case 'merged': {
      const last = bufs[bufs.length - 1];
      if (last !== undefined && last.write) bufs[bufs.length - 1] = { ...last, len: last.len + 1 };
      else bufs.push(status);
      break;
    }
    case 'none': break;
    case 'readable': bufs.push({ ...status, write: false }); break;
    case 'empty': bufs.push({ ...status, len: 0 }); break;
    case 'first': bufs.unshift(status); break;
  }
  const header = new Uint8Array(16);
  const hv = new DataView(header.buffer);
  hv.setUint32(0, r.type >>> 0, true);
  let sector = r.sector;
  if (r.endDelta !== null) {
    const dataBytes = r.data.reduce((n, d) => n + d.len, 0);
    sector = BigInt(Math.max(0, Math.floor((DISK_BYTES - dataBytes) / 512) + r.endDelta));
  }
  hv.setBigUint64(8, BigInt.asUintN(64, sector), true);
  const readableLen = bufs.filter((b) => !b.write).reduce((n, b) => n + b.len, 0);
  const readable = new Uint8Array(Math.max(readableLen, 16));
  fillPattern(readable, r.fill);
  readable.set(header, 0);
  readable.set(payload.subarray(0, Math.max(0, readable.length - 16)), 16);
  return { bufs, readable };
}

function layOut(s: Scenario): Layout {
  const regions = LAYOUTS[s.layout];
  const g = new InstrumentedGuest(regions);
  g.mem.recording = false;
  g.regions.forEach((r, i) => fillPattern(r.bytes, 0x1234 + i));
  const size = 1 << s.sizeLog2;
  const base = regions[0].gpa;
  const descAddr = base + DESC_OFF;
  const availAddr = base + AVAIL_OFF;
  const usedAddr = base + USED_OFF;
  g.at(descAddr, 16 * size).fill(0);
  // Just past the descriptor table (and past each indirect table below), a
  // descriptor that would make a valid status buffer: a device that reads beyond
  // a table gets a chain the model refuses.
  const trap = (at: number): void => writeDescAt(g, at, { addr: BigInt(regions[0].gpa + DATA_OFF - 1), len: 1, flags: F_WRITE, next: 0 });
  trap(descAddr + 16 * size);
  g.at(availAddr, 6 + 2 * size).fill(0);
  g.at(usedAddr, 6 + 8 * size).fill(0);
  g.viewAt(availAddr, 4).setUint16(2, s.baseIdx, true);
  g.viewAt(usedAddr, 4).setUint16(2, s.baseIdx, true);

  const alloc = new Allocator(regions.map((r, i) => [i === 0 ? r.gpa + DATA_OFF : r.gpa, r.gpa + r.size]));
  const heads: number[] = [];
  const indirectTables: Layout['indirectTables'] = [];
  let slot = 0;
  for (const r of s.reqs) {
    const { bufs, readable } = chainOf(r);
    if (bufs.length === 0) bufs.push({ len: 16, write: false, place: { kind: 'fresh', align: 8 } });
    const placed: Placed[] = bufs.map((b) => ({ addr: placeBuf(g, alloc, b, regions), len: b.len, write: b.write }));
    // Device-readable bytes go into the readable buffers in order.
    let at = 0;
    for (const p of placed) {
      if (p.write) continue;
      poke(g, p.addr, readable.subarray(at, at + p.len));
      at += p.len;
    }
    const indirect = r.indirect || placed.length > size - slot;
    if (indirect) {
      if (slot >= size) { heads.push(-1); continue; }
      const table = alloc.take(16 * placed.length + 16, 16);
      trap(table + 16 * placed.length);
      placed.forEach((p, i) => writeDescAt(g, table + 16 * i, {
        addr: p.addr, len: p.len, flags: (p.write ? F_WRITE : 0) | (i < placed.length - 1 ? F_NEXT : 0), next: i + 1,
      }));
      writeDescAt(g, descAddr + 16 * slot, { addr: BigInt(table), len: 16 * placed.length, flags: F_INDIRECT, next: 0 });
      indirectTables.push({ addr: table, count: placed.length, slot });
      heads.push(slot++);
    } else {
      placed.forEach((p, i) => writeDescAt(g, descAddr + 16 * (slot + i), {
        addr: p.addr, len: p.len, flags: (p.write ? F_WRITE : 0) | (i < placed.length - 1 ? F_NEXT : 0), next: slot + i + 1,
      }));
      heads.push(slot);
      slot += placed.length;
    }
  }
  const l: Layout = { g, base, size, descAddr, availAddr, usedAddr, heads, indirectTables };
  for (const m of s.mutations) mutate(l, m);
  return l;
}

function mutate(l: Layout, m: Mutation): void {
  const { g, indirectTables } = l;
  let at: number;
  if (m.field === 'tableLen') {
    if (indirectTables.length === 0) return;
    const t = indirectTables[m.which % indirectTables.length];
    g.viewAt(l.descAddr + 16 * t.slot, 16).setUint32(8, Math.max(0, 16 * t.count + Number(m.value)), true);
    return;
  }
  if (m.table === 'indirect' && indirectTables.length > 0) {
    const t = indirectTables[m.which % indirectTables.length];
    at = t.addr + 16 * (m.entry % t.count);
  } else {
    at = l.descAddr + 16 * (m.entry % l.size);
  }
  const v = g.viewAt(at, 16);
  if (m.field === 'addr') v.setBigUint64(0, m.value, true);
  else if (m.field === 'len') v.setUint32(8, Number(m.value), true);
  else if (m.field === 'flags') v.setUint16(12, Number(m.value), true);
  else v.setUint16(14, Number(m.value), true);
}

// ---- running it and checking --------------------------------------------------------

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

/** Heads offered per round (jump rounds as null), in available-ring order. */
function offeredHeads(s: Scenario, l: Layout): Array<number[] | null> {
  return s.rounds.map((r) => {
    if (r.kind === 'jump') return null;
    const heads = r.heads.map((p) => (p.kind === 'any' ? p.head : l.heads[p.i % l.heads.length]));
    // Requests that did not fit are offered as head 0; at most a queue's worth per round.
    return heads.map((h) => (h < 0 ? 0 : h)).slice(0, l.size);
  });
}

/** What happened, for coverage statistics (the fuzz runner's --stats). */
export interface ScenarioOutcome {
  clean: boolean;
  broken: string;
  popped: number;
  /** Per popped head: the model's verdict ('refused: why', 'no status') or the status written. */
  answers: string[];
}

export async function runScenario(s: Scenario): Promise<ScenarioOutcome> {
  const l = layOut(s);
  const { g, size } = l;
  const rounds = offeredHeads(s, l);
  const disk = testDisk({ ...s.disk, sizeBytes: DISK_BYTES });
  const model: DeviceModel = {
    g, disk, cache: { writeback: s.writeback }, maxIov: 64, engineMayFail: s.injected.some((v) => v !== 0),
  };

  // The model's view of every head the guest offers, on memory as laid out.
  const offeredSet = new Set(rounds.flatMap((r) => r ?? []).filter((h) => h < size));
  const chains = new Map<number, { chain: ModelChain; exp?: Expectation }>();
  for (const h of offeredSet) {
    const chain = modelWalk(g, l.descAddr, size, h, s.indirect);
    chains.set(h, { chain, exp: chain.ok ? expectFor(model, chain) : undefined });
  }
  // Defined outcome only if what the device may write cannot change what it reads.
  const usedRing: Range = { start: BigInt(l.usedAddr), end: BigInt(l.usedAddr + 6 + 8 * size) };
  const readsAll: Range[] = [
    { start: BigInt(l.descAddr), end: BigInt(l.descAddr + 16 * size) },
    { start: BigInt(l.availAddr), end: BigInt(l.availAddr + 6 + 2 * size) },
    usedRing,
    ...[...chains.values()].flatMap((c) => c.chain.reads),
  ];
  // Descriptors rewritten during the run: the model's chains may no longer be the device's.
  let clean = !s.rounds.some((r) => r.kind === 'offer' && r.scribble.length > 0);
  for (const [h, c] of chains) {
    for (const w of c.exp?.writable ?? []) {
      if (readsAll.some((r) => overlaps(w, r))) clean = false;
      for (const [h2, c2] of chains) if (h2 !== h && (c2.exp?.writable ?? []).some((w2) => overlaps(w, w2))) clean = false;
    }
  }
  if (clean) {
    // A status byte the device forgot to write must not pass for a valid one.
    for (const c of chains.values()) if (c.exp && !c.exp.noStatus) poke(g, c.exp.statusAddr, Uint8Array.of(0xee));
  }

  const diskBytes = new Uint8Array(DISK_BYTES);
  fillPattern(diskBytes, 0x5eed);
  const before = g.snapshot();
  g.mem.recording = true;
  const h = makeHarness(g, {
    ring: { size, descAddr: l.descAddr, availAddr: l.availAddr, usedAddr: l.usedAddr },
    baseIdx: s.baseIdx, eventIdx: s.eventIdx, indirect: s.indirect, disk, cache: model.cache, diskBytes,
    synchronous: s.synchronous, injected: s.injected, bounceSlots: s.bounceSlots, bounceSlotBytes: s.bounceSlotBytes,
  });

  // Run the rounds; note where the ring broke (events before that pop).
  // The guest's own writes to the available ring go into the snapshot too, so
  // that only the device's writes show up as changes.
  const avail = g.viewAt(l.availAddr, 6 + 2 * size);
  const availBefore = new DataView(before[0].buffer, l.availAddr - l.base, 6 + 2 * size);
  const guestWrite = (off: number, v: number): void => {
    avail.setUint16(off, v, true);
    availBefore.setUint16(off, v, true);
  };
  let availIdx = s.baseIdx;
  const offered: number[] = [];
  /** Index into `offered` where each jump round happened. */
  const jumps: number[] = [];
  for (let i = 0; i < s.rounds.length; i++) {
    const r = rounds[i];
    g.mem.recording = false;
    if (r === null) {
      availIdx = (availIdx + (s.rounds[i] as { by: number }).by) & 0xffff;
      jumps.push(offered.length);
    } else {
      for (const m of (s.rounds[i] as { scribble: Mutation[] }).scribble) mutate(l, m);
      for (const head of r) {
        guestWrite(4 + 2 * (availIdx % size), head);
        availIdx = (availIdx + 1) & 0xffff;
        offered.push(head);
      }
    }
    guestWrite(2, availIdx);
    g.mem.recording = true;
    h.drain();
    if (r !== null && (s.rounds[i] as { settle: boolean }).settle) await h.settle();
  }
  await h.settle();
  g.mem.recording = false;
  check(l, h, { chains, clean, before, offered, jumps });
  const popped = h.events.filter((e) => e.op === 'pop').map((e) => e.head);
  return {
    clean, broken: h.queue.broken ? h.queue.brokenReason.replace(/[0-9]+/g, 'N') : '', popped: popped.length,
    answers: popped.map((hd) => {
      const c = chains.get(hd)!;
      if (!c.chain.ok) return `refused: ${c.chain.why}`;
      if (c.exp!.noStatus) return 'no status';
      return clean ? `${typeName(requestType(g, c.chain))} ${STATUS_NAMES[g.at(Number(c.exp!.statusAddr), 1)[0]]}` : 'aliased';
    }),
  };
}

interface RunFacts {
  chains: Map<number, { chain: ModelChain; exp?: Expectation }>;
  clean: boolean;
  before: Uint8Array[];
  offered: number[];
  jumps: number[];
}

function check(l: Layout, h: Harness, f: RunFacts): void {
  const { g, size } = l;
  const q = h.queue;
  const fail = (what: string): never => { throw new Error(`${what} (queue ${q.broken ? `broken: ${q.brokenReason}` : 'ok'})`); };

  // Never throws.
  if (h.errors.length > 0) {
    const e = h.errors[0];
    fail(`data path threw: ${e instanceof Error ? e.stack : String(e)}`);
  }

  // Each head taken is returned exactly once, before it is taken again.
  const inFlight = new Uint8Array(size);
  for (const e of h.events) {
    if (e.head >= size) fail(`${e.op} of head ${e.head} outside the queue`);
    if (e.op === 'pop') {
      if (inFlight[e.head]) fail(`head ${e.head} taken twice`);
      inFlight[e.head] = 1;
    } else {
      if (!inFlight[e.head]) fail(`head ${e.head} returned without being in flight`);
      inFlight[e.head] = 0;
    }
  }
  const lost = inFlight.findIndex((x) => x !== 0);
  if (lost >= 0 || q.inFlight !== 0) fail(`head ${lost} never returned (inFlight ${q.inFlight})`);

  // Memory is touched only inside regions.
  const outside = g.accessesOutside();
  if (outside.length > 0) fail(`access outside the regions: ${outside[0].kind} ${hex(outside[0].gpa)}+${outside[0].len}`);
  const guard = g.guardBroken();
  if (guard >= 0) fail(`guard bytes after region ${guard} were written`);
  const bounce = h.bounceBytes();
  for (const c of h.engine.calls) {
    for (let i = 0; i < c.iov.length; i += 2) {
      const [a, n] = [c.iov[i], c.iov[i + 1]];
      const inBounce = a >= BOUNCE_HOST && a + n <= BOUNCE_HOST + bounce.length;
      if (!inBounce && !g.hostRangeInside(a, n)) fail(`engine iovec ${hex(a)}+${n} is outside every region`);
    }
  }

  if (!f.clean) return;

  // The available ring is consumed in order; a broken ring has a real reason.
  const popped = h.events.filter((e) => e.op === 'pop').map((e) => e.head);
  const k = popped.length;
  if (popped.some((hd, i) => hd !== f.offered[i])) fail(`took heads ${popped} but the guest offered ${f.offered}`);
  if (!q.broken) {
    if (k !== f.offered.length) fail(`took ${k} of ${f.offered.length} offered heads`);
    if (f.jumps.length > 0) fail('the available index ran ahead but the ring was not broken');
  } else {
    const reason = q.brokenReason;
    const next = f.offered[k];
    if (/jumped/.test(reason)) {
      if (!f.jumps.includes(k)) fail(`ring broken for a jump after ${k} heads, but the guest made none there`);
    } else if (/out of range/.test(reason)) {
      if (!(next >= size)) fail(`ring broken for head out of range, next offered is ${next}`);
    } else if (/again while in flight/.test(reason)) {
      const upTo = h.events.slice(0, h.brokenAt);
      const pops = upTo.filter((e) => e.op === 'pop' && e.head === next).length;
      const pushes = upTo.filter((e) => e.op === 'push' && e.head === next).length;
      if (pops <= pushes) fail(`ring broken for head ${next} in flight, but it was not`);
    } else {
      fail(`ring broken for an unexpected reason: ${reason}`);
    }
  }

  // Each chain answered as the model allows; writes only where the guest allowed them.
  const mayWrite: Range[] = [{ start: BigInt(l.usedAddr), end: BigInt(l.usedAddr + 6 + 8 * size) }];
  for (const head of new Set(popped)) {
    const { chain, exp } = f.chains.get(head)!;
    const lens = h.events.filter((e) => e.op === 'push' && e.head === head).map((e) => (e as { len: number }).len);
    if (!chain.ok || exp!.noStatus) {
      if (lens.some((n) => n !== 0)) fail(`head ${head}: chain must be refused (${chain.ok ? 'no status byte' : chain.why}) but used length is ${lens}`);
      continue;
    }
    mayWrite.push(...exp!.writable);
    const status = g.at(Number(exp!.statusAddr), 1)[0];
    const want = exp!.allowed.get(status);
    const allowed = [...exp!.allowed].map(([st, n]) => `${STATUS_NAMES[st]}/${n}`).join(', ');
    if (want === undefined) fail(`head ${head}: status byte ${hex(status)} at ${hex(exp!.statusAddr)}, allowed ${allowed}`);
    if (lens[lens.length - 1] !== want) fail(`head ${head}: status ${STATUS_NAMES[status]} with used length ${lens[lens.length - 1]}, allowed ${allowed}`);
    const okLens = new Set(exp!.allowed.values());
    if (lens.some((n) => !okLens.has(n))) fail(`head ${head}: used lengths ${lens}, allowed ${allowed}`);
  }
  for (const a of g.changedSince(f.before)) {
    const b = BigInt(a);
    if (!mayWrite.some((r) => b >= r.start && b < r.end)) fail(`device wrote ${hex(a)}, outside every device-writable buffer`);
  }

  // The used ring holds what was pushed, in order.
  if (!q.broken) {
    const pushes = h.events.filter((e) => e.op === 'push') as Array<{ head: number; len: number }>;
    const used = g.viewAt(l.usedAddr, 6 + 8 * size);
    // The device starts from the used index in memory (which the guest may have scribbled over).
    const start = new DataView(f.before[0].buffer).getUint16(l.usedAddr - l.base + 2, true);
    if (used.getUint16(2, true) !== ((start + pushes.length) & 0xffff)) fail(`used index ${used.getUint16(2, true)} after ${pushes.length} pushes from ${start}`);
    pushes.slice(-size).forEach((p, i) => {
      const slot = (start + pushes.length - Math.min(size, pushes.length) + i) % size;
      const [hd, n] = [used.getUint32(4 + 8 * slot, true), used.getUint32(8 + 8 * slot, true)];
      if (hd !== p.head || n !== p.len) fail(`used slot ${slot} holds (${hd}, ${n}), pushed (${p.head}, ${p.len})`);
    });
  }
}

export const hostileQueueProperty = (): fc.IAsyncPropertyWithHooks<[Scenario]> =>
  fc.asyncProperty(scenarioArb(), async (s) => { await runScenario(s); });
