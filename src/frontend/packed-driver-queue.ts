// The DRIVER side of a packed virtqueue (virtio 1.2 §2.8): what a guest kernel
// does with VIRTIO_F_RING_PACKED. Descriptors go into the ring at the driver's
// position, each flagged available for the current lap (AVAIL = wrap counter,
// USED = its opposite); the head of a chain is flagged last, at publish(), so
// the device sees whole chains. Used elements come back at the driver's used
// position, flagged AVAIL = USED = the device's wrap counter. Like DriverQueue,
// it has raw methods for playing hostile drivers and does no I/O itself.
import { RangeAllocator } from './allocator';
import {
  DriverBuffer, DriverQueueOptions, DriverRing, DriverRingBase, RingLayout, UsedElement, VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, setAddr,
} from './driver-queue';

export const VRING_PACKED_DESC_F_AVAIL = 1 << 7;
export const VRING_PACKED_DESC_F_USED = 1 << 15;
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;

const DESC_SIZE = 16;

/** A packed descriptor exactly as stored; raw methods accept any values. */
export interface PackedDescriptor {
  addr: number;
  len: number;
  id: number;
  flags: number;
}

/** AVAIL/USED bits that make a descriptor available in the lap with driver wrap counter `wrap`. */
export function availFlags(wrap: number): number {
  return wrap === 1 ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED;
}

/** The descriptor ring and the two event suppression areas (driver's in availAddr, device's in usedAddr). */
export function allocatePackedRing(size: number, allocator: RangeAllocator): RingLayout {
  if (!(size >= 1 && size <= 32768)) throw new RangeError(`queue size ${size} out of range`);
  return {
    size,
    descAddr: allocator.alloc(DESC_SIZE * size, 16),
    availAddr: allocator.alloc(4, 4),
    usedAddr: allocator.alloc(4, 4),
  };
}

export class PackedDriverQueue extends DriverRingBase implements DriverRing {
  readonly size: number;
  private readonly mem: DataView;
  private readonly desc16: Uint16Array;
  private readonly desc32: Uint32Array;
  /** off_wrap, flags: written here. */
  private readonly driverEvent: Uint16Array;
  /** off_wrap, flags: written by the device. */
  private readonly deviceEvent: Uint16Array;

  /** Next ring position to fill and the wrap counter of its lap. */
  nextAvail = 0;
  availWrap = 1;
  /** Next ring position to reap and the device's wrap counter expected there. */
  lastUsed = 0;
  usedWrap = 1;
  /** Ring positions not holding an outstanding chain. */
  private freeDescs: number;
  private readonly freeIds: number[] = [];
  /** Per id: ring descriptors its chain takes (0 when not outstanding). */
  private readonly descCount: Uint16Array;
  /** Heads added but not yet flagged: position and flags, in order. */
  private pendingHeads: Array<{ pos: number; flags: number }> = [];
  /** Ring position (0..2*size, wrap folded in) at the previous kick decision. */
  private notified = 0;

  constructor(memory: ArrayBuffer, readonly layout: RingLayout, o: DriverQueueOptions) {
    super(layout.size, o);
    const size = layout.size;
    const inside = (addr: number, len: number): boolean => addr >= 0 && addr + len <= memory.byteLength;
    if (!inside(layout.descAddr, DESC_SIZE * size) || !inside(layout.availAddr, 4) || !inside(layout.usedAddr, 4)) {
      throw new RangeError('ring outside guest memory');
    }
    this.size = size;
    this.mem = new DataView(memory);
    this.desc16 = new Uint16Array(memory, layout.descAddr, 8 * size);
    this.desc32 = new Uint32Array(memory, layout.descAddr, 4 * size);
    this.driverEvent = new Uint16Array(memory, layout.availAddr, 2);
    this.deviceEvent = new Uint16Array(memory, layout.usedAddr, 2);
    this.freeDescs = size;
    for (let i = size - 1; i >= 0; i--) this.freeIds.push(i);
    this.descCount = new Uint16Array(size);
  }

  clearRings(): void {
    this.desc16.fill(0);
    this.driverEvent.fill(0);
    this.deviceEvent.fill(0);
  }

  /** SET_VRING_BASE for this ring as it stands: both positions with their wrap counters. */
  get base(): number {
    return ((this.nextAvail | (this.availWrap << 15)) | ((this.lastUsed | (this.usedWrap << 15)) << 16)) >>> 0;
  }

  resumeBase(): number { return this.base; }

  get outstanding(): number { return this.size - this.freeIds.length; }

  add(buffers: readonly DriverBuffer[], opts: { indirect?: boolean } = {}): number {
    const n = buffers.length;
    if (n === 0) throw new RangeError('a chain needs at least one buffer');
    const indirect = opts.indirect === true;
    const need = indirect ? 1 : n;
    if (need > this.size) throw new RangeError(`chain of ${n} buffers does not fit a queue of ${this.size}`);
    if (this.freeDescs < need || this.freeIds.length === 0) return -1;
    const id = this.freeIds.pop()!;
    this.descCount[id] = need;
    this.freeDescs -= need;
    if (indirect) {
      const table = this.allocTable(id, n);
      buffers.forEach((b, i) => this.writeDescAt(table + DESC_SIZE * i, { addr: b.addr, len: b.len, id: 0, flags: b.writable ? VRING_DESC_F_WRITE : 0 }));
      this.place([{ addr: table, len: DESC_SIZE * n, id, flags: VRING_DESC_F_INDIRECT }]);
    } else {
      this.place(buffers.map((b, i) => ({ addr: b.addr, len: b.len, id, flags: (b.writable ? VRING_DESC_F_WRITE : 0) | (i < n - 1 ? VRING_DESC_F_NEXT : 0) })));
    }
    return id;
  }

  /**
   * Write a chain at the next positions; the head's flags wait for publish().
   * Until then the head slot keeps the flags of the last lap, which read as
   * neither available (to the device) nor used (to us) in this one: zero
   * flags would read as used in a lap whose wrap counter is 0.
   */
  private place(descs: PackedDescriptor[]): void {
    let head: { pos: number; flags: number } | undefined;
    for (const d of descs) {
      const pos = this.nextAvail;
      const flags = d.flags | availFlags(this.availWrap);
      if (head === undefined) {
        this.writeDescAt(this.layout.descAddr + DESC_SIZE * pos, { ...d, flags: this.desc16[8 * pos + 7] });
        head = { pos, flags };
      } else {
        this.writeDescriptor(pos, { ...d, flags });
      }
      if (++this.nextAvail === this.size) {
        this.nextAvail = 0;
        this.availWrap ^= 1;
      }
    }
    this.pendingHeads.push(head!);
  }

  /** A position and wrap counter as one number in 0..2*size (the lap with wrap 1 first). */
  private linear(idx: number, wrap: number): number {
    return wrap === 1 ? idx : idx + this.size;
  }

  /** How far linear position `to` is ahead of `from`, going round the two laps. */
  private ahead(from: number, to: number): number {
    const laps = 2 * this.size;
    return (((to - from) % laps) + laps) % laps;
  }

  publish(): boolean {
    for (const h of this.pendingHeads) Atomics.store(this.desc16, 8 * h.pos + 7, h.flags);
    this.pendingHeads = [];
    const old = this.notified;
    const now = this.linear(this.nextAvail, this.availWrap);
    this.notified = now;
    if (now === old) return false;
    // The seq-cst flag stores above keep this read after them.
    const flags = Atomics.load(this.deviceEvent, 1);
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.o.eventIdx) return true;
    const offWrap = Atomics.load(this.deviceEvent, 0);
    // Did this publish make the position the device waits on available: is it in [old, now)?
    return this.ahead(old, this.linear(offWrap & 0x7fff, offWrap >> 15)) < this.ahead(old, now);
  }

  hasUsed(): boolean {
    const flags = Atomics.load(this.desc16, 8 * this.lastUsed + 7);
    return ((flags >> 7) & 1) === this.usedWrap && ((flags >> 15) & 1) === this.usedWrap;
  }

  reap(): UsedElement | undefined {
    if (!this.hasUsed()) return undefined;
    const pos = this.lastUsed;
    const id = this.desc16[8 * pos + 6];
    const len = this.desc32[4 * pos + 2];
    const known = id < this.size && this.descCount[id] > 0;
    const skip = known ? this.descCount[id] : 1;
    this.lastUsed += skip;
    if (this.lastUsed >= this.size) {
      this.lastUsed -= this.size;
      this.usedWrap ^= 1;
    }
    if (!known) {
      this.unknownUsed++;
      return { id, len, known: false };
    }
    this.freeDescs += this.descCount[id];
    this.descCount[id] = 0;
    this.freeIds.push(id);
    this.freeTable(id);
    return { id, len, known: true };
  }

  enableInterrupts(): boolean {
    if (this.o.eventIdx) {
      Atomics.store(this.driverEvent, 0, this.lastUsed | (this.usedWrap << 15));
      Atomics.store(this.driverEvent, 1, RING_EVENT_FLAGS_DESC);
    } else {
      Atomics.store(this.driverEvent, 1, RING_EVENT_FLAGS_ENABLE);
    }
    return this.hasUsed();
  }

  disableInterrupts(): void {
    Atomics.store(this.driverEvent, 1, RING_EVENT_FLAGS_DISABLE);
  }

  // ---- what the device published, and raw access for hostile-driver tests ----

  get deviceEventFlags(): number { return Atomics.load(this.deviceEvent, 1); }
  get deviceEventOffWrap(): number { return Atomics.load(this.deviceEvent, 0); }
  setDriverEvent(offWrap: number, flags: number): void {
    Atomics.store(this.driverEvent, 0, offWrap);
    Atomics.store(this.driverEvent, 1, flags);
  }

  writeDescriptor(pos: number, d: PackedDescriptor): void {
    if (!(pos >= 0 && pos < this.size)) throw new RangeError(`position ${pos} outside a ring of ${this.size}`);
    this.writeDescAt(this.layout.descAddr + DESC_SIZE * pos, d);
    // The flags hand the descriptor over: stored last.
    Atomics.store(this.desc16, 8 * pos + 7, d.flags);
  }

  readDescriptor(pos: number): PackedDescriptor {
    const o = this.layout.descAddr + DESC_SIZE * pos;
    const v = this.mem;
    return { addr: v.getUint32(o + 4, true) * 0x1_0000_0000 + v.getUint32(o, true), len: v.getUint32(o + 8, true),
      id: v.getUint16(o + 12, true), flags: v.getUint16(o + 14, true) };
  }

  /** Write descriptors anywhere in guest memory (an indirect table, hostile or not). */
  writeTable(addr: number, descs: readonly PackedDescriptor[]): void {
    descs.forEach((d, i) => this.writeDescAt(addr + DESC_SIZE * i, d));
  }

  private writeDescAt(off: number, d: PackedDescriptor): void {
    const v = this.mem;
    setAddr(v, off, d.addr);
    v.setUint32(off + 8, d.len, true);
    v.setUint16(off + 12, d.id, true);
    v.setUint16(off + 14, d.flags, true);
  }
}

