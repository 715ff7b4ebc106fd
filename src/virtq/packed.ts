// Packed virtqueue (virtio 1.2 §2.8) over guest memory mapped in this process.
//
// One ring of descriptors is shared both ways: the driver makes a descriptor
// available by setting its AVAIL flag to its wrap counter (and USED to the
// opposite), the device returns a buffer by writing a used descriptor (buffer id,
// length, AVAIL = USED = its wrap counter) at the next used position, skipping as
// many positions as the returned chain took. Each side keeps a wrap counter that
// flips when its position passes the end of the ring. Notifications are
// suppressed through two small structures: the driver's (read here, whether to
// interrupt) and the device's (written here, whether the driver should kick).
//
// The driver owns the descriptors until it makes them available and may write
// anything there, so everything read from the ring is treated as hostile: ids
// are range-checked and unique, chains bounded by the free part of the ring,
// buffers checked against the memory table. Descriptors are copied when a
// request is taken (DescPool): neither the used elements written over the ring
// later nor the driver reusing the slots can change a request that waits.
// Nothing allocates per request.
import { DirtyLog } from '../memory/dirty-log';
import { GuestMemory } from '../memory/guest-memory';
import {
  CHAIN_BAD_HEAD, CHAIN_BAD_INDIRECT, CHAIN_NESTED_INDIRECT, CHAIN_OK, Chain, DESC_SIZE, MAX_QUEUE_SIZE, mapIndirectTable,
} from './chain';
import { InFlightSet } from './in-flight-set';
import { InflightRecovery } from './inflight';
import { DescPool } from './desc-pool';
import { PackedInflight } from './packed-inflight';
import { SplitRingLayout } from './split';
import { Virtqueue } from './virtqueue';

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_PACKED_DESC_F_AVAIL = 1 << 7;
export const VRING_PACKED_DESC_F_USED = 1 << 15;
/** Event suppression flags (virtio 1.2 §2.8.10). */
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;
/** Bit 15 of an event offset and of a vring base half: the wrap counter. */
export const WRAP_BIT = 0x8000;

/**
 * Ring parts of a packed queue, in the fields vhost-user's SET_VRING_ADDR fills:
 * availAddr is the driver event suppression area, usedAddr the device's.
 */
export type PackedRingLayout = SplitRingLayout;

/** Why a packed ring could not be set up; undefined when it could. */
export function checkPackedRingLayout(mem: GuestMemory, l: PackedRingLayout): string | undefined {
  if (!(l.size >= 1 && l.size <= MAX_QUEUE_SIZE && (l.size & (l.size - 1)) === 0)) return `bad queue size ${l.size}`;
  if (l.descAddr % 16 !== 0) return 'descriptor ring not 16-byte aligned';
  if (l.availAddr % 4 !== 0) return 'driver event suppression area not 4-byte aligned';
  if (l.usedAddr % 4 !== 0) return 'device event suppression area not 4-byte aligned';
  if (!mem.access(l.descAddr, DESC_SIZE * l.size)) return 'descriptor ring outside guest memory';
  if (!mem.access(l.availAddr, 4)) return 'driver event suppression area outside guest memory';
  if (!mem.access(l.usedAddr, 4)) return 'device event suppression area outside guest memory';
  return undefined;
}

/** Both positions of a packed ring as vhost-user's vring base carries them: avail | wrap << 15, used | wrap << 15 in the high half. */
export function packedBase(availIdx: number, availWrap: number, usedIdx: number, usedWrap: number): number {
  return ((availIdx | (availWrap << 15)) | ((usedIdx | (usedWrap << 15)) << 16)) >>> 0;
}

/** Whether a descriptor with `flags` is available in the lap whose driver wrap counter is `wrap`. */
function isAvailable(flags: number, wrap: number): boolean {
  return ((flags >> 7) & 1) === wrap && ((flags >> 15) & 1) !== wrap;
}

export class PackedQueue implements Virtqueue {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;

  private desc16!: Uint16Array;
  private desc32!: Uint32Array;
  /** Driver event suppression: off_wrap, flags. */
  private driverEvent!: Uint16Array;
  /** Device event suppression as one u32 (off_wrap | flags << 16), written in one store. */
  private deviceEvent!: Uint32Array;

  /** Next ring position to take from, and the driver's wrap counter there. */
  lastAvail = 0;
  availWrap = 1;
  /** Next ring position to write a used element at, and our wrap counter. */
  usedIdx = 0;
  usedWrap = 1;
  /** Used position (as one number in 0..2*size) at the last interrupt decision. */
  private signalled = 0;

  private readonly taken: InFlightSet;
  /** Per id: first and last slot of its descriptors' copies in the pool, and how many ring descriptors it took. */
  private readonly chainFirst: Uint16Array;
  private readonly chainLast: Uint16Array;
  private readonly chainLen: Uint16Array;
  private readonly pool: DescPool;
  /** Ring descriptors taken and not yet returned by a publish: never more than the ring. */
  private ownedDescs = 0;
  /** Of those, the ones pushed since the last publish. */
  private releasedDescs = 0;
  /** Used elements written (id, len) but not yet flagged: flags go out at publish(), the first one last. */
  private readonly pendingPos: Uint16Array;
  private readonly pendingFlags: Uint16Array;
  /** Head entries in the in-flight region of the pending used elements. */
  private readonly pendingEntries: Uint16Array;
  private pendingCount = 0;

  broken = false;
  brokenReason = '';
  private inflight: PackedInflight | undefined;
  /** Per id: head entry of its chain in the in-flight region. */
  private readonly regionEntry: Uint16Array;
  private resubmit: Uint16Array = new Uint16Array(0);
  private resubmitNext = 0;
  /** Where push() walks a chain again to log its pages during a migration (made on first use). */
  private logChain: Chain | undefined;

  /** `base`: SET_VRING_BASE's value (packedBase); a front-end that sends only the low half resumes both positions there. */
  constructor(private readonly mem: GuestMemory, readonly layout: PackedRingLayout, base: number,
              features: { eventIdx: boolean; indirect: boolean }) {
    const size = layout.size;
    this.size = size;
    this.eventIdx = features.eventIdx;
    this.indirect = features.indirect;
    const low = base & 0xffff;
    const high = base >>> 16;
    const used = high === 0 && low !== 0 ? low : high;
    this.lastAvail = low & 0x7fff;
    this.availWrap = low >> 15;
    this.usedIdx = used & 0x7fff;
    this.usedWrap = used >> 15;
    if (this.lastAvail >= size || this.usedIdx >= size) throw new RangeError(`vring base 0x${base.toString(16)} is beyond a ring of ${size}`);
    this.ownedDescs = this.ahead(this.linear(this.usedIdx, this.usedWrap), this.linear(this.lastAvail, this.availWrap));
    if (this.ownedDescs > size) throw new RangeError(`vring base 0x${base.toString(16)}: avail more than a ring ahead of used`);
    this.signalled = this.linear(this.usedIdx, this.usedWrap);
    this.taken = new InFlightSet(size);
    this.chainFirst = new Uint16Array(size);
    this.chainLast = new Uint16Array(size);
    this.chainLen = new Uint16Array(size);
    this.pool = new DescPool(size);
    this.pendingPos = new Uint16Array(size);
    this.pendingFlags = new Uint16Array(size);
    this.pendingEntries = new Uint16Array(size);
    this.regionEntry = new Uint16Array(size);
    const why = this.remap();
    if (why !== undefined) throw new RangeError(why);
  }

  /** A position and wrap counter as one number in 0..2*size: laps alternate between the two halves. */
  private linear(idx: number, wrap: number): number {
    return wrap === 1 ? idx : idx + this.size;
  }

  /** How far linear position `to` is ahead of `from`, going round the two laps. */
  private ahead(from: number, to: number): number {
    const laps = 2 * this.size;
    return (((to - from) % laps) + laps) % laps;
  }

  remap(): string | undefined {
    const mem = this.mem;
    const l = this.layout;
    const why = checkPackedRingLayout(mem, l);
    if (why !== undefined) return why;
    mem.access(l.descAddr, DESC_SIZE * l.size);
    const descBuffer = mem.buffer;
    const descOff = mem.offset;
    mem.access(l.availAddr, 4);
    const driverBuffer = mem.buffer;
    const driverOff = mem.offset;
    mem.access(l.usedAddr, 4);
    if (descOff % 16 !== 0 || driverOff % 4 !== 0 || mem.offset % 4 !== 0) return 'ring misaligned within its memory region';
    this.desc16 = new Uint16Array(descBuffer, descOff, 8 * l.size);
    this.desc32 = new Uint32Array(descBuffer, descOff, 4 * l.size);
    this.driverEvent = new Uint16Array(driverBuffer, driverOff, 2);
    this.deviceEvent = new Uint32Array(mem.buffer, mem.offset, 1);
    return undefined;
  }

  markBroken(reason: string): void {
    this.broken = true;
    this.brokenReason = reason;
  }

  get inFlight(): number { return this.taken.count; }
  get pendingResubmits(): number { return this.resubmit.length - this.resubmitNext; }
  get base(): number { return packedBase(this.lastAvail, this.availWrap, this.usedIdx, this.usedWrap); }
  describe(): Record<string, number> {
    return { lastAvail: this.lastAvail, availWrap: this.availWrap, usedIdx: this.usedIdx, usedWrap: this.usedWrap };
  }

  whenInFlightDone(done: () => void): void {
    this.taken.whenDone(done);
  }

  /**
   * Track requests in the front-end's in-flight region, resubmitting what a
   * previous process left there. The region's committed used position replaces
   * SET_VRING_BASE's (after a crash QEMU cannot know it), and the ring resumes
   * taking after the descriptors still in flight: every position between the
   * used and the available one belongs to a request in flight.
   */
  trackInflight(buffer: ArrayBuffer, byteOffset: number, descNum: number): InflightRecovery {
    if (this.inflight !== undefined) throw new Error('in-flight tracking is already set up');
    if (descNum < this.size) throw new RangeError(`in-flight region has ${descNum} descriptors, queue ${this.size}`);
    const region = new PackedInflight(buffer, byteOffset, descNum);
    const d16 = this.desc16;
    const r = region.recover(this.size, this.usedIdx, this.usedWrap, {
      flags: (pos) => Atomics.load(d16, 8 * pos + 7),
      setFlags: (pos, flags) => Atomics.store(d16, 8 * pos + 7, flags),
    });
    this.inflight = region;
    if (r.initialised) return r;
    this.usedIdx = r.usedIdx;
    this.usedWrap = r.usedWrap;
    this.signalled = this.linear(this.usedIdx, this.usedWrap);
    // The recovered chains are all the ring holds for us now, whatever SET_VRING_BASE
    // said: they took the positions from the used one on (in some order).
    this.ownedDescs = 0;
    for (let i = 0; i < r.heads.length; i++) {
      const id = r.heads[i];
      let e = r.entries[i];
      const n = region.numOf(e);
      let slot = -1;
      for (let k = 0; k < n; k++) {
        slot = this.pool.take(slot);
        if (k === 0) this.chainFirst[id] = slot;
        e = region.copyEntry(e, this.pool, slot);
      }
      this.chainLast[id] = slot;
      this.chainLen[id] = n;
      this.regionEntry[id] = r.entries[i];
      this.ownedDescs += n;
    }
    const avail = this.usedIdx + this.ownedDescs;
    this.lastAvail = avail % this.size;
    this.availWrap = avail >= this.size ? this.usedWrap ^ 1 : this.usedWrap;
    this.resubmit = r.heads;
    this.resubmitNext = 0;
    return r;
  }

  hasAvailable(): boolean {
    if (this.broken) return false;
    if (this.resubmitNext < this.resubmit.length) return true;
    return isAvailable(Atomics.load(this.desc16, 8 * this.lastAvail + 7), this.availWrap);
  }

  pop(): number {
    if (this.resubmitNext < this.resubmit.length) return this.popResubmit();
    if (!this.hasAvailable()) return -1;
    const size = this.size;
    const d16 = this.desc16;
    const d32 = this.desc32;
    const pool = this.pool;
    const start = this.lastAvail;
    const free = size - this.ownedDescs;
    let pos = start;
    let wrap = this.availWrap;
    let n = 0;
    let first = -1;
    let slot = -1;
    for (;;) {
      // The flags were read (acquire) before the rest of the descriptor.
      const flags = n === 0 ? Atomics.load(d16, 8 * pos + 7) : d16[8 * pos + 7];
      if (n > 0 && !isAvailable(flags, wrap)) {
        this.markBroken(`descriptor chain at ${start} continues into descriptor ${pos}, which is not available`);
        return -1;
      }
      if (++n > free) {
        this.markBroken(`descriptor chain at ${start} is longer than the ${free} free descriptors of the ring`);
        return -1;
      }
      // At most `free` descriptors are held, and the pool has a slot for each of the ring's.
      slot = pool.take(slot);
      if (n === 1) first = slot;
      pool.lo[slot] = d32[4 * pos];
      pool.hi[slot] = d32[4 * pos + 1];
      pool.len[slot] = d32[4 * pos + 2];
      pool.id[slot] = d16[8 * pos + 6];
      pool.flags[slot] = flags;
      if (!(flags & VRING_DESC_F_NEXT)) break;
      if (++pos === size) {
        pos = 0;
        wrap ^= 1;
      }
    }
    // The buffer id is in the last descriptor of the chain (virtio 1.2 §2.8.6).
    const id = pool.id[slot];
    if (id >= size) {
      this.markBroken(`buffer id ${id} out of range (queue size ${size})`);
      return -1;
    }
    if (this.taken.has(id)) {
      this.markBroken(`buffer id ${id} made available again while in flight`);
      return -1;
    }
    // Marked before anything else is committed: a ring broken here holds no half-taken request.
    if (this.inflight !== undefined) {
      const entry = this.inflight.mark(pool, first, n);
      if (entry < 0) {
        this.markBroken('in-flight region free list is broken');
        return -1;
      }
      this.regionEntry[id] = entry;
    }
    this.taken.add(id);
    this.chainFirst[id] = first;
    this.chainLast[id] = slot;
    this.chainLen[id] = n;
    this.ownedDescs += n;
    if (++pos === size) {
      pos = 0;
      wrap ^= 1;
    }
    this.lastAvail = pos;
    this.availWrap = wrap;
    return id;
  }

  private popResubmit(): number {
    if (this.broken) return -1;
    const id = this.resubmit[this.resubmitNext++];
    this.taken.add(id);
    return id;
  }

  walk(id: number, chain: Chain): number {
    chain.reset(id);
    if (id >= this.size || !this.taken.has(id)) return CHAIN_BAD_HEAD;
    const pool = this.pool;
    const n = this.chainLen[id];
    for (let k = 0, s = this.chainFirst[id]; k < n; k++, s = pool.next[s]) {
      const flags = pool.flags[s];
      const err = (flags & VRING_DESC_F_INDIRECT) !== 0
        ? (n === 1 ? this.walkIndirect(pool.lo[s], pool.hi[s], pool.len[s], chain) : CHAIN_NESTED_INDIRECT)
        : chain.add(this.mem, pool.lo[s], pool.hi[s], pool.len[s], (flags & VRING_DESC_F_WRITE) !== 0);
      if (err !== CHAIN_OK) return err;
    }
    return CHAIN_OK;
  }

  /**
   * An indirect descriptor is a whole chain by itself (virtio 1.2 §2.8.7: never
   * with NEXT); its table's descriptors are all used, in order, and NEXT in them
   * means nothing. The table stays the device's until the buffer is used.
   */
  private walkIndirect(lo: number, hi: number, len: number, chain: Chain): number {
    if (!this.indirect) return CHAIN_NESTED_INDIRECT;
    const mem = this.mem;
    const count = mapIndirectTable(mem, lo, hi, len);
    if (count < 0) return CHAIN_BAD_INDIRECT;
    const table = mem.view;
    const off = mem.offset;
    for (let i = 0; i < count; i++) {
      const o = off + i * DESC_SIZE;
      const flags = table.getUint16(o + 14, true);
      if (flags & VRING_DESC_F_INDIRECT) return CHAIN_NESTED_INDIRECT;
      const err = chain.add(mem, table.getUint32(o, true), table.getUint32(o + 4, true), table.getUint32(o + 8, true),
        (flags & VRING_DESC_F_WRITE) !== 0);
      if (err !== CHAIN_OK) return err;
    }
    return CHAIN_OK;
  }

  /**
   * Write a used element for `id` at the used position; its flags, which hand it
   * to the driver, wait for publish(). The position it overwrites held a
   * descriptor taken earlier, copied then.
   */
  push(id: number, writtenLen: number): void {
    const log = this.mem.dirtyLog;
    if (log !== undefined) this.logWrites(log, id);
    this.taken.remove(id);
    // The request is done with its descriptors.
    this.pool.giveBack(this.chainFirst[id], this.chainLast[id]);
    if (this.broken) return;
    const pos = this.usedIdx;
    this.desc32[4 * pos + 2] = writtenLen;
    this.desc16[8 * pos + 6] = id;
    const c = this.pendingCount++;
    this.pendingPos[c] = pos;
    this.pendingFlags[c] = (this.usedWrap === 1 ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0) |
      (writtenLen > 0 ? VRING_DESC_F_WRITE : 0);
    this.pendingEntries[c] = this.regionEntry[id];
    const n = this.chainLen[id];
    this.releasedDescs += n;
    let next = pos + n;
    if (next >= this.size) {
      next -= this.size;
      this.usedWrap ^= 1;
    }
    this.usedIdx = next;
  }

  /** Migration: the pages of the request's device-writable buffers, written before it is returned. */
  private logWrites(log: DirtyLog, id: number): void {
    const chain = (this.logChain ??= new Chain());
    if (this.walk(id, chain) === CHAIN_OK) chain.logWrites(log);
  }

  publish(): boolean {
    if (this.broken) return false;
    const count = this.pendingCount;
    if (count > 0) {
      this.inflight?.release(this.pendingEntries, count, this.usedIdx, this.usedWrap);
      // The first element last: the driver reads them in order and stops at the
      // first one not yet flagged, so it sees the whole batch or none of it.
      const d16 = this.desc16;
      for (let i = count - 1; i >= 0; i--) Atomics.store(d16, 8 * this.pendingPos[i] + 7, this.pendingFlags[i]);
      const log = this.mem.dirtyLog;
      if (log !== undefined) for (let i = 0; i < count; i++) log.mark(this.layout.descAddr + DESC_SIZE * this.pendingPos[i], DESC_SIZE);
      this.inflight?.commit(this.pendingEntries, count);
      this.pendingCount = 0;
      this.ownedDescs -= this.releasedDescs;
      this.releasedDescs = 0;
    }
    const now = this.linear(this.usedIdx, this.usedWrap);
    const old = this.signalled;
    if (now === old) return false;
    this.signalled = now;
    // After the seq-cst flag stores above: the driver's suppression state is read after the batch is visible.
    const flags = Atomics.load(this.driverEvent, 1);
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.eventIdx) return true;
    const offWrap = Atomics.load(this.driverEvent, 0);
    const event = this.linear(offWrap & 0x7fff, offWrap >> 15);
    // Did the used position pass the driver's event position: is it in [old, now)?
    return this.ahead(old, event) < this.ahead(old, now);
  }

  suppressKicks(): void {
    if (this.broken) return;
    Atomics.store(this.deviceEvent, 0, RING_EVENT_FLAGS_DISABLE << 16);
    this.mem.dirtyLog?.mark(this.layout.usedAddr, 4);
  }

  allowKicks(): boolean {
    if (this.broken) return false;
    // With EVENT_IDX: a kick when the driver makes the next descriptor we would take available.
    const value = this.eventIdx
      ? ((RING_EVENT_FLAGS_DESC << 16) | this.lastAvail | (this.availWrap << 15)) >>> 0
      : RING_EVENT_FLAGS_ENABLE << 16;
    Atomics.store(this.deviceEvent, 0, value);
    this.mem.dirtyLog?.mark(this.layout.usedAddr, 4);
    // The seq-cst store orders the reload after it.
    return this.hasAvailable();
  }
}
