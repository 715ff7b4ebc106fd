// Property: a hostile driver cannot make a packed virtqueue misbehave.
//
// A scenario is a memory layout, a packed ring whose descriptors are arbitrary
// (hostile addresses and lengths, ids in and out of range, every combination of
// NEXT/WRITE/INDIRECT and the AVAIL/USED bits), indirect tables as arbitrary,
// and a sequence of operations: the device takes, walks, returns and publishes
// requests in any order, suppresses and re-allows kicks, while the driver
// rewrites descriptors (even of requests in flight), adds well-formed chains,
// and changes its event suppression area. The queue runs it over instrumented
// memory and must:
// - never throw;
// - take exactly the chain a simple reference model (written from the virtio
//   1.2 text, with BigInt and plain reads) finds, or break the ring when the
//   model says the driver broke a rule, and then do nothing more;
// - walk each request to the buffers the model gathers from the descriptors as
//   they were when it was taken (indirect tables as they are at the walk), or
//   to the same error;
// - write guest memory only where the model writes: used elements (id, length,
//   flags) at the used positions at publish, and the device event area;
// - ask for an interrupt exactly when the driver's event suppression says so;
// - touch memory only inside regions (recorded accesses, guard bytes).
import fc from 'fast-check';
import {
  CHAIN_BAD_ADDRESS, CHAIN_BAD_HEAD, CHAIN_BAD_INDIRECT, CHAIN_NESTED_INDIRECT, CHAIN_OK, CHAIN_TOO_LONG, Chain, MAX_CHAIN_LENGTH,
} from '../../src/virtq/chain';
import { PackedQueue, packedBase } from '../../src/virtq/packed';
import { InstrumentedGuest, RegionSpec } from '../support/instrumented-memory';

const DESC_OFF = 0x1000;
const DRIVER_OFF = 0x1800;
const DEVICE_OFF = 0x1900;
const TABLE_OFF = 0x2000;
const TABLE_STRIDE = 0x200;
const TABLES = 4;
const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;
const AVAIL = 1 << 7;
const USED = 1 << 15;

/** Small regions: every operation compares all of guest memory with what it was before. */
const LAYOUTS: RegionSpec[][] = [
  [{ gpa: 0, size: 0x4000 }],
  [{ gpa: 0, size: 0x3800 }, { gpa: 0x3800, size: 0x800 }],
  [{ gpa: 0, size: 0x4000 }, { gpa: 0x8000, size: 0x1000 }],
];

interface Desc { addr: bigint; len: number; id: number; flags: number }

type Op =
  | { kind: 'pop' }
  | { kind: 'walk'; pick: number }
  | { kind: 'push'; pick: number; len: number }
  | { kind: 'publish' }
  | { kind: 'suppress' }
  | { kind: 'allow' }
  | { kind: 'scribble'; pos: number; desc: Desc }
  | { kind: 'table'; table: number; entry: number; desc: Desc }
  | { kind: 'add'; count: number; indirect: boolean }
  | { kind: 'event'; offWrap: number; flags: number };

interface Scenario {
  layout: number;
  sizeLog2: number;
  availIdx: number;
  availWrap: number;
  eventIdx: boolean;
  indirect: boolean;
  ring: Desc[];
  tables: Desc[][];
  ops: Op[];
}

function hostileAddr(): fc.Arbitrary<bigint> {
  return fc.oneof(
    { weight: 6, arbitrary: fc.bigInt({ min: 0x3000n, max: 0x3f00n }) },
    { weight: 1, arbitrary: fc.constantFrom(0n, 0x37f8n, 0x3800n, 0x3ff0n, 0x4000n, 0x8ff0n, 0x9000n, 2n ** 32n, 2n ** 53n - 8n, 2n ** 53n, 2n ** 64n - 8n) },
    { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) },
  );
}

function desc(maxId: number): fc.Arbitrary<Desc> {
  return fc.record({
    addr: hostileAddr(),
    len: fc.oneof({ weight: 5, arbitrary: fc.integer({ min: 0, max: 600 }) }, { weight: 1, arbitrary: fc.constantFrom(16, 32, 48, 24, 0xffffffff, 0x10000) }),
    id: fc.oneof({ weight: 8, arbitrary: fc.nat(maxId) }, { weight: 1, arbitrary: fc.nat(0xffff) }),
    flags: fc.oneof(
      { weight: 6, arbitrary: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean(), fc.nat(3)).map(([n, w, i, aw]) =>
        (n ? NEXT : 0) | (w ? WRITE : 0) | (i ? INDIRECT : 0) | (aw & 1 ? AVAIL : 0) | (aw & 2 ? USED : 0)) },
      { weight: 1, arbitrary: fc.nat(0xffff) },
    ),
  });
}

function scenario(): fc.Arbitrary<Scenario> {
  return fc.record({ layout: fc.nat(LAYOUTS.length - 1), sizeLog2: fc.nat(4) }).chain(({ layout, sizeLog2 }) => {
    const size = 1 << sizeLog2;
    const op: fc.Arbitrary<Op> = fc.oneof(
      { weight: 6, arbitrary: fc.constant({ kind: 'pop' as const }) },
      { weight: 4, arbitrary: fc.record({ kind: fc.constant('walk' as const), pick: fc.nat(40) }) },
      { weight: 5, arbitrary: fc.record({ kind: fc.constant('push' as const), pick: fc.nat(40), len: fc.nat(5000) }) },
      { weight: 3, arbitrary: fc.constant({ kind: 'publish' as const }) },
      { weight: 1, arbitrary: fc.constant({ kind: 'suppress' as const }) },
      { weight: 1, arbitrary: fc.constant({ kind: 'allow' as const }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('scribble' as const), pos: fc.nat(size - 1), desc: desc(size) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('table' as const), table: fc.nat(TABLES - 1), entry: fc.nat(7), desc: desc(size) }) },
      { weight: 4, arbitrary: fc.record({ kind: fc.constant('add' as const), count: fc.integer({ min: 1, max: 4 }), indirect: fc.boolean() }) },
      { weight: 2, arbitrary: fc.record({
        kind: fc.constant('event' as const),
        // Mostly a real position with a wrap counter, so that "exactly at the used position" comes up.
        offWrap: fc.oneof({ weight: 4, arbitrary: fc.tuple(fc.nat(size - 1), fc.nat(1)).map(([p, w]) => p | (w << 15)) }, { weight: 1, arbitrary: fc.nat(0xffff) }),
        flags: fc.oneof({ weight: 6, arbitrary: fc.nat(2) }, { weight: 1, arbitrary: fc.nat(0xffff) }),
      }) },
    );
    return fc.record({
      layout: fc.constant(layout),
      sizeLog2: fc.constant(sizeLog2),
      availIdx: fc.nat(size - 1),
      availWrap: fc.nat(1),
      eventIdx: fc.boolean(),
      indirect: fc.boolean(),
      // Half the rings start with nothing available, so that only the driver's adds and scribbles
      // make things available and scenarios get deep before (if ever) the ring breaks.
      ring: fc.tuple(fc.boolean(), fc.array(desc(size), { minLength: size, maxLength: size }))
        .map(([quiet, ring]) => (quiet ? ring.map((d) => ({ ...d, flags: d.flags & ~(AVAIL | USED) & 0xffff })) : ring)),
      tables: fc.array(fc.array(desc(size), { minLength: 8, maxLength: 8 }), { minLength: TABLES, maxLength: TABLES }),
      ops: fc.array(op, { minLength: 10, maxLength: 120, size: 'large' }),
    });
  });
}

/** The reference: the device side of a packed ring as the spec describes it, over the same memory. */
class Model {
  lastAvail: number;
  availWrap: number;
  usedIdx: number;
  usedWrap: number;
  owned = 0;
  released = 0;
  broken = false;
  readonly taken = new Map<number, { descs: Desc[] }>();
  pending: Array<{ pos: number; id: number; len: number; flags: number }> = [];
  signalled: number;

  constructor(private readonly g: InstrumentedGuest, readonly size: number, avail: number, wrap: number,
              private readonly eventIdx: boolean, private readonly indirect: boolean) {
    this.lastAvail = this.usedIdx = avail;
    this.availWrap = this.usedWrap = wrap;
    this.signalled = this.linear(avail, wrap);
  }

  private linear(idx: number, wrap: number): number { return wrap === 1 ? idx : idx + this.size; }

  readDesc(gpa: number): Desc {
    const b = this.g.read(gpa, 16);
    const v = new DataView(b.buffer);
    return { addr: v.getBigUint64(0, true), len: v.getUint32(8, true), id: v.getUint16(12, true), flags: v.getUint16(14, true) };
  }

  private availableIn(flags: number, wrap: number): boolean {
    return ((flags & AVAIL) !== 0) === (wrap === 1) && ((flags & USED) !== 0) !== (wrap === 1);
  }

  /** -1: nothing available; -2: the driver broke a rule; else the id. */
  pop(): number {
    if (this.broken) return -1;
    let pos = this.lastAvail;
    let wrap = this.availWrap;
    const first = this.readDesc(DESC_OFF + 16 * pos);
    if (!this.availableIn(first.flags, wrap)) return -1;
    const descs: Desc[] = [];
    let d = first;
    for (;;) {
      if (descs.length > 0 && !this.availableIn(d.flags, wrap)) return this.break();
      descs.push(d);
      if (descs.length > this.size - this.owned) return this.break();
      pos = (pos + 1) % this.size;
      if (pos === 0) wrap ^= 1;
      if ((d.flags & NEXT) === 0) break;
      d = this.readDesc(DESC_OFF + 16 * pos);
    }
    const id = descs[descs.length - 1].id;
    if (id >= this.size || this.taken.has(id)) return this.break();
    this.taken.set(id, { descs });
    this.owned += descs.length;
    this.lastAvail = pos;
    this.availWrap = wrap;
    return id;
  }

  private break(): number {
    this.broken = true;
    return -2;
  }

  /** The buffers of request `id`, or a chain error code. */
  walk(id: number): { err: number; bufs: Array<[bigint, number, boolean]> } {
    const t = this.taken.get(id);
    if (t === undefined) return { err: CHAIN_BAD_HEAD, bufs: [] };
    const bufs: Array<[bigint, number, boolean]> = [];
    const add = (d: Desc): number => {
      if (d.addr >= 2n ** 53n) return CHAIN_BAD_ADDRESS;
      if (bufs.length >= MAX_CHAIN_LENGTH) return CHAIN_TOO_LONG;
      if (d.len > 0 && !this.g.covers(d.addr, BigInt(d.len))) return CHAIN_BAD_ADDRESS;
      bufs.push([d.addr, d.len, (d.flags & WRITE) !== 0]);
      return CHAIN_OK;
    };
    for (const d of t.descs) {
      let err: number;
      if (d.flags & INDIRECT) {
        if (!this.indirect || t.descs.length !== 1) return { err: CHAIN_NESTED_INDIRECT, bufs };
        if (d.addr >= 2n ** 53n || d.len === 0 || d.len % 16 !== 0 || d.len / 16 > MAX_CHAIN_LENGTH ||
            this.g.regionOf(Number(d.addr), d.len) === undefined) return { err: CHAIN_BAD_INDIRECT, bufs };
        err = CHAIN_OK;
        for (let i = 0; i < d.len / 16 && err === CHAIN_OK; i++) {
          const e = this.readDesc(Number(d.addr) + 16 * i);
          err = (e.flags & INDIRECT) ? CHAIN_NESTED_INDIRECT : add(e);
        }
      } else {
        err = add(d);
      }
      if (err !== CHAIN_OK) return { err, bufs };
    }
    return { err: CHAIN_OK, bufs };
  }

  push(id: number, len: number): void {
    const n = this.taken.get(id)!.descs.length;
    this.taken.delete(id);
    if (this.broken) return;
    this.pending.push({ pos: this.usedIdx, id, len, flags: (this.usedWrap === 1 ? AVAIL | USED : 0) | (len > 0 ? WRITE : 0) });
    this.released += n;
    this.usedIdx += n;
    if (this.usedIdx >= this.size) {
      this.usedIdx -= this.size;
      this.usedWrap ^= 1;
    }
  }

  /** Whether an interrupt is due, and where used elements were written. */
  publish(driverOffWrap: number, driverFlags: number): { notify: boolean; written: Array<{ pos: number; id: number; len: number; flags: number }> } {
    if (this.broken) return { notify: false, written: [] };
    const written = this.pending;
    this.pending = [];
    this.owned -= this.released;
    this.released = 0;
    const now = this.linear(this.usedIdx, this.usedWrap);
    const old = this.signalled;
    if (now === old) return { notify: false, written };
    this.signalled = now;
    if (driverFlags === 1) return { notify: false, written };
    if (driverFlags !== 2 || !this.eventIdx) return { notify: true, written };
    const ring = 2 * this.size;
    const event = this.linear(driverOffWrap & 0x7fff, driverOffWrap >> 15);
    const mod = (x: number): number => ((x % ring) + ring) % ring;
    return { notify: mod(event - old) < mod(now - old), written };
  }
}

function writeDesc(g: InstrumentedGuest, gpa: number, d: Desc): void {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, d.addr, true);
  v.setUint32(8, d.len, true);
  v.setUint16(12, d.id, true);
  v.setUint16(14, d.flags, true);
  g.write(gpa, b);
}

export function runHostilePacked(s: Scenario): void {
  const size = 1 << s.sizeLog2;
  const g = new InstrumentedGuest(LAYOUTS[s.layout]);
  g.mem.recording = false;
  s.ring.forEach((d, i) => writeDesc(g, DESC_OFF + 16 * i, d));
  s.tables.forEach((t, i) => t.forEach((d, j) => writeDesc(g, TABLE_OFF + TABLE_STRIDE * i + 16 * j, d)));
  g.mem.recording = true;
  const layout = { size, descAddr: DESC_OFF, availAddr: DRIVER_OFF, usedAddr: DEVICE_OFF };
  const q = new PackedQueue(g.mem, layout, packedBase(s.availIdx, s.availWrap, s.availIdx, s.availWrap), { eventIdx: s.eventIdx, indirect: s.indirect });
  const m = new Model(g, size, s.availIdx, s.availWrap, s.eventIdx, s.indirect);
  const chain = new Chain();
  const inFlight: number[] = [];
  // A well-behaved driver's next position (it adds where it thinks the ring is free).
  let driverPos = s.availIdx;
  let driverWrap = s.availWrap;
  let nextId = 0;
  /** Ring positions the driver rewrote since the last publish. */
  const scribbledSincePush = new Set<number>();
  const fail = (why: string): never => {
    throw new Error(`${why} (queue ${JSON.stringify(q.describe())}, broken: ${q.brokenReason})`);
  };

  for (const op of s.ops) {
    const before = g.snapshot();
    let allowed: Array<[number, number]> = [];
    switch (op.kind) {
      case 'pop': {
        const want = m.pop();
        const got = q.pop();
        if (want === -2) {
          if (got !== -1 || !q.broken) fail(`the model breaks the ring here, the queue returned ${got}`);
        } else if (got !== want) {
          fail(`pop returned ${got}, the model ${want}`);
        } else if (got >= 0) {
          inFlight.push(got);
        }
        if (q.broken !== m.broken) fail(`broken ${q.broken}, the model ${m.broken}`);
        break;
      }
      case 'walk': {
        if (inFlight.length === 0) break;
        const id = inFlight[op.pick % inFlight.length];
        const want = m.walk(id);
        const err = q.walk(id, chain);
        if (err !== want.err) fail(`walk of ${id} gave ${err}, the model ${want.err}`);
        if (err === CHAIN_OK) {
          if (chain.count !== want.bufs.length) fail(`walk of ${id}: ${chain.count} buffers, the model ${want.bufs.length}`);
          want.bufs.forEach(([addr, len, w], i) => {
            if (BigInt(chain.addr[i]) !== addr || chain.len[i] !== len || (chain.writable[i] === 1) !== w) fail(`walk of ${id}: buffer ${i} differs`);
          });
        }
        break;
      }
      case 'push': {
        if (inFlight.length === 0) break;
        const id = inFlight.splice(op.pick % inFlight.length, 1)[0];
        const pos = m.usedIdx;
        m.push(id, op.len);
        q.push(id, op.len);
        // id and length go out now; the flags at publish.
        if (!m.broken) allowed = [[DESC_OFF + 16 * pos + 8, 6]];
        break;
      }
      case 'publish': {
        const ev = new DataView(g.read(DRIVER_OFF, 4).buffer);
        const want = m.publish(ev.getUint16(0, true), ev.getUint16(2, true));
        const got = q.publish();
        if (got !== want.notify) fail(`publish wants an interrupt: ${got}, the model ${want.notify}`);
        for (const w of want.written) {
          const d = m.readDesc(DESC_OFF + 16 * w.pos);
          // The driver may have scribbled over id and length since the push (its own loss); the flags are ours.
          const scribbled = scribbledSincePush.has(w.pos);
          if (d.flags !== w.flags || (!scribbled && (d.id !== w.id || d.len !== w.len))) {
            fail(`used element at ${w.pos}: id ${d.id} len ${d.len} flags ${d.flags}, the model ${w.id} ${w.len} ${w.flags}`);
          }
          allowed.push([DESC_OFF + 16 * w.pos + 14, 2]);
        }
        scribbledSincePush.clear();
        break;
      }
      case 'suppress':
        q.suppressKicks();
        allowed = [[DEVICE_OFF, 4]];
        break;
      case 'allow': {
        q.allowKicks();
        allowed = [[DEVICE_OFF, 4]];
        break;
      }
      case 'scribble':
        g.mem.recording = false;
        writeDesc(g, DESC_OFF + 16 * op.pos, op.desc);
        g.mem.recording = true;
        scribbledSincePush.add(op.pos);
        continue;
      case 'table':
        g.mem.recording = false;
        writeDesc(g, TABLE_OFF + TABLE_STRIDE * op.table + 16 * op.entry, op.desc);
        g.mem.recording = true;
        continue;
      case 'add': {
        // A well-formed chain of `count` buffers (or one indirect descriptor), head flagged last.
        g.mem.recording = false;
        const id = nextId++ % size;
        const n = op.indirect ? 1 : op.count;
        const positions: Array<[number, number]> = [];
        for (let i = 0; i < n; i++) {
          positions.push([driverPos, driverWrap]);
          driverPos = (driverPos + 1) % size;
          if (driverPos === 0) driverWrap ^= 1;
        }
        const flagsAt = (i: number, wrap: number): number => (wrap === 1 ? AVAIL : USED) |
          (op.indirect ? INDIRECT : (i < n - 1 ? NEXT : 0) | (i === n - 1 ? WRITE : 0));
        for (let i = n - 1; i >= 0; i--) {
          const [pos, wrap] = positions[i];
          const addr = op.indirect ? BigInt(TABLE_OFF + TABLE_STRIDE * (id % TABLES)) : BigInt(0x3000 + 0x100 * i);
          writeDesc(g, DESC_OFF + 16 * pos, { addr, len: op.indirect ? 16 * op.count : 64, id, flags: flagsAt(i, wrap) });
          // This driver keeps no books: it may write over slots the device owns.
          scribbledSincePush.add(pos);
        }
        g.mem.recording = true;
        continue;
      }
      case 'event': {
        g.mem.recording = false;
        const b = new Uint8Array(4);
        new DataView(b.buffer).setUint16(0, op.offWrap, true);
        new DataView(b.buffer).setUint16(2, op.flags, true);
        g.write(DRIVER_OFF, b);
        g.mem.recording = true;
        continue;
      }
    }
    for (const a of g.changedSince(before)) {
      if (!allowed.some(([at, len]) => a >= at && a < at + len)) fail(`${op.kind} wrote guest memory at 0x${a.toString(16)}`);
    }
    if (g.guardBroken() >= 0) fail(`${op.kind} wrote past a region`);
    const outside = g.accessesOutside();
    if (outside.length > 0) fail(`${op.kind} accessed memory outside regions: ${JSON.stringify(outside[0])}`);
    if (q.inFlight !== inFlight.length) fail(`inFlight ${q.inFlight}, expected ${inFlight.length}`);
  }
}

export function hostilePackedProperty(): fc.IPropertyWithHooks<[Scenario]> {
  return fc.property(scenario(), (s) => runHostilePacked(s));
}
