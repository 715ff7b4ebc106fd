// The DRIVER side of a split virtqueue (virtio 1.2 §2.7): what a guest kernel
// does. It lays out the rings in guest memory, adds descriptor chains, publishes
// the available index, decides whether the device wants a kick, and reaps used
// elements. It also has raw methods that write whatever a test wants into the
// rings, so hostile drivers can be played against the device.
//
// Memory is one ArrayBuffer indexed by guest physical address, so the same code
// runs over a memfd mapping (GuestRam) or a plain buffer in unit tests. Nothing
// here does I/O: kicks go through the `notify` callback.
import { RangeAllocator } from './allocator';

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_USED_F_NO_NOTIFY = 1;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;

const DESC_SIZE = 16;

export interface RingLayout {
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
}

export interface DriverBuffer {
  /** Guest physical address. */
  addr: number;
  len: number;
  /** Device-writable (VRING_DESC_F_WRITE). */
  writable: boolean;
}

/** A descriptor exactly as stored; raw methods accept any values. */
export interface Descriptor {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

export interface UsedElement {
  id: number;
  len: number;
  /** False when `id` is not the head of a chain this driver has outstanding (a device bug). */
  known: boolean;
}

export interface DriverQueueOptions {
  /** VIRTIO_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** Sends a notification to the device (writes the kick eventfd). */
  notify?: () => void;
  /** Where indirect tables are allocated; required for add(..., { indirect: true }). */
  allocator?: RangeAllocator;
}

/** What a request queue needs of a driver ring, split (DriverQueue) or packed (PackedDriverQueue). */
export interface DriverRing {
  readonly size: number;
  readonly layout: RingLayout;
  /** Notifications sent to the device. */
  readonly kicks: number;
  /** Zero the ring memory; a driver does this before handing the rings to a device. */
  clearRings(): void;
  /** Add a chain (visible at publish()); returns its id, or -1 when the ring has no room. */
  add(buffers: readonly DriverBuffer[], opts?: { indirect?: boolean }): number;
  /** Make added chains visible; says whether the device asked to be notified. */
  publish(): boolean;
  /** publish() and notify the device if it wants it. */
  kick(): boolean;
  notify(): void;
  hasUsed(): boolean;
  reap(): UsedElement | undefined;
  reapAll(): UsedElement[];
  /** Ask for an interrupt; true if used elements are already pending (reap them, none may come). */
  enableInterrupts(): boolean;
  disableInterrupts(): void;
  /** SET_VRING_BASE after a reconnect, as QEMU 7.2 sends it (the back-end's in-flight region has the last word). */
  resumeBase(): number;
}

/**
 * What both ring layouts' drivers do alike: notifications, reaping everything
 * used, and the indirect tables of outstanding chains.
 */
export abstract class DriverRingBase {
  /** Notifications sent to the device. */
  kicks = 0;
  /** Used elements that named a chain we did not have outstanding. */
  unknownUsed = 0;
  /** Per chain id: address of its indirect table, or -1. */
  private readonly indirectTable: Float64Array;

  constructor(size: number, protected readonly o: DriverQueueOptions) {
    this.indirectTable = new Float64Array(size).fill(-1);
  }

  abstract publish(): boolean;
  abstract reap(): UsedElement | undefined;

  /** publish() and notify the device if it wants it; returns whether it was notified. */
  kick(): boolean {
    if (!this.publish()) return false;
    this.notify();
    return true;
  }

  /** Notify the device regardless of its suppression state. */
  notify(): void {
    this.kicks++;
    this.o.notify?.();
  }

  reapAll(): UsedElement[] {
    const out: UsedElement[] = [];
    for (let e = this.reap(); e !== undefined; e = this.reap()) out.push(e);
    return out;
  }

  /** Room for an indirect table of `count` descriptors, owned by chain `id` until it is reaped. */
  protected allocTable(id: number, count: number): number {
    const allocator = this.o.allocator;
    if (allocator === undefined) throw new Error('indirect descriptors need an allocator');
    const table = allocator.alloc(DESC_SIZE * count, 16);
    this.indirectTable[id] = table;
    return table;
  }

  /** Chain `id` was reaped: free its indirect table, if it had one. */
  protected freeTable(id: number): void {
    const table = this.indirectTable[id];
    if (table < 0) return;
    this.indirectTable[id] = -1;
    this.o.allocator?.free(table);
  }
}

/** Store a guest address (below 2^64, as a Number) as two little-endian u32 halves. */
export function setAddr(view: DataView, off: number, addr: number): void {
  view.setUint32(off, addr % 0x1_0000_0000, true);
  view.setUint32(off + 4, Math.floor(addr / 0x1_0000_0000), true);
}

export function ringSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: DESC_SIZE * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

/** Allocate the three ring parts with the alignment virtio 1.x requires (16, 2, 4). */
export function allocateRing(size: number, allocator: RangeAllocator): RingLayout {
  if (!(size >= 1 && size <= 32768 && (size & (size - 1)) === 0)) throw new RangeError(`queue size ${size} is not a power of two`);
  const s = ringSizes(size);
  return {
    size,
    descAddr: allocator.alloc(s.desc, 16),
    availAddr: allocator.alloc(s.avail, 2),
    usedAddr: allocator.alloc(s.used, 4),
  };
}

export function freeRing(layout: RingLayout, allocator: RangeAllocator): void {
  allocator.free(layout.descAddr);
  allocator.free(layout.availAddr);
  allocator.free(layout.usedAddr);
}

export class DriverQueue extends DriverRingBase implements DriverRing {
  readonly size: number;
  private readonly mask: number;
  private readonly desc: DataView;
  private readonly mem: DataView;
  /** flags, idx, ring[size], used_event */
  private readonly avail: Uint16Array;
  /** flags, idx, ring as u32 pairs, avail_event */
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;

  /** Free descriptor indices, used as a stack. */
  private readonly freeStack: Uint16Array;
  private freeTop: number;
  /** Per head: descriptors of its chain (undefined when the head is not outstanding). */
  private readonly chains: Array<number[] | undefined>;
  /** Next avail index to fill (ahead of the published one until publish()). */
  availIdx = 0;
  /** avail.idx at the previous kick decision (the "old" of vring_need_event). */
  private notifiedIdx = 0;
  /** Next used index to reap. */
  lastUsed = 0;
  constructor(memory: ArrayBuffer, readonly layout: RingLayout, o: DriverQueueOptions) {
    super(layout.size, o);
    const size = layout.size;
    if (!(size >= 1 && size <= 32768 && (size & (size - 1)) === 0)) throw new RangeError(`queue size ${size} is not a power of two`);
    const s = ringSizes(size);
    const inside = (addr: number, len: number): boolean => addr >= 0 && addr + len <= memory.byteLength;
    if (!inside(layout.descAddr, s.desc) || !inside(layout.availAddr, s.avail) || !inside(layout.usedAddr, s.used)) {
      throw new RangeError('ring outside guest memory');
    }
    this.size = size;
    this.mask = size - 1;
    this.mem = new DataView(memory);
    this.desc = new DataView(memory, layout.descAddr, s.desc);
    this.avail = new Uint16Array(memory, layout.availAddr, 3 + size);
    this.used16 = new Uint16Array(memory, layout.usedAddr, 3 + 4 * size);
    this.used32 = new Uint32Array(memory, layout.usedAddr + 4, 2 * size);
    this.freeStack = new Uint16Array(size);
    this.freeTop = size;
    // Hand out low indices first: chains of a fresh queue are then 0,1,2... which keeps dumps readable.
    for (let i = 0; i < size; i++) this.freeStack[i] = size - 1 - i;
    this.chains = new Array<number[] | undefined>(size).fill(undefined);
  }

  /** Zero the ring memory; a driver does this before handing the rings to a device. */
  clearRings(): void {
    new Uint8Array(this.desc.buffer, this.layout.descAddr, DESC_SIZE * this.size).fill(0);
    this.avail.fill(0);
    this.used16.fill(0);
  }

  /**
   * Continue from ring indices other than 0 (a ring resumed with SET_VRING_BASE,
   * or a test crossing the 16-bit wrap). Only valid with nothing outstanding.
   */
  resume(availIdx: number, usedIdx: number): void {
    if (this.outstanding > 0) throw new Error('resume() with chains outstanding');
    this.availIdx = this.notifiedIdx = availIdx & 0xffff;
    this.lastUsed = usedIdx & 0xffff;
    Atomics.store(this.avail, 1, this.availIdx);
  }

  get freeDescriptors(): number { return this.freeTop; }
  /** Chains added and not yet reaped. */
  get outstanding(): number {
    let n = 0;
    for (const c of this.chains) if (c !== undefined) n++;
    return n;
  }

  /** Descriptors add() needs for these buffers. */
  descriptorsNeeded(count: number, indirect: boolean): number {
    return indirect ? 1 : count;
  }

  /**
   * Write a chain and put its head in the available ring (visible to the device
   * only after publish()). Returns the head, or -1 when too few descriptors are free.
   */
  add(buffers: readonly DriverBuffer[], opts: { indirect?: boolean } = {}): number {
    const n = buffers.length;
    if (n === 0) throw new RangeError('a chain needs at least one buffer');
    const indirect = opts.indirect === true;
    if (!indirect && n > this.size) throw new RangeError(`chain of ${n} buffers does not fit a queue of ${this.size}`);
    if (this.freeTop < this.descriptorsNeeded(n, indirect)) return -1;
    let head: number;
    if (indirect) {
      head = this.freeStack[--this.freeTop];
      const table = this.allocTable(head, n);
      for (let i = 0; i < n; i++) {
        const b = buffers[i];
        this.writeDescAt(this.mem, table + DESC_SIZE * i, {
          addr: b.addr, len: b.len, flags: flagsOf(b, i < n - 1), next: i < n - 1 ? i + 1 : 0,
        });
      }
      this.writeDescriptor(head, { addr: table, len: DESC_SIZE * n, flags: VRING_DESC_F_INDIRECT, next: 0 });
      this.chains[head] = [head];
    } else {
      const ids: number[] = [];
      for (let i = 0; i < n; i++) ids.push(this.freeStack[--this.freeTop]);
      for (let i = 0; i < n; i++) {
        const b = buffers[i];
        this.writeDescriptor(ids[i], { addr: b.addr, len: b.len, flags: flagsOf(b, i < n - 1), next: i < n - 1 ? ids[i + 1] : 0 });
      }
      head = ids[0];
      this.chains[head] = ids;
    }
    this.avail[2 + (this.availIdx & this.mask)] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
    return head;
  }

  /**
   * Make added chains visible. Returns whether the device asked to be notified
   * about them (EVENT_IDX avail_event, else the used ring's NO_NOTIFY flag).
   */
  publish(): boolean {
    // Seq-cst store then load: the ring entries are visible before the index, and
    // the read of the device's suppression state cannot move above the store
    // (the driver-side half of virtio 2.7.13.3's barrier).
    Atomics.store(this.avail, 1, this.availIdx);
    const now = this.availIdx;
    const old = this.notifiedIdx;
    this.notifiedIdx = now;
    if (now === old) return false;
    if (this.o.eventIdx) {
      const event = Atomics.load(this.used16, 2 + 4 * this.size);
      return needEvent(event, now, old);
    }
    return (Atomics.load(this.used16, 0) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /** QEMU 7.2 resumes a split ring at the used index (GET_VRING_BASE could not be asked). */
  resumeBase(): number { return this.deviceUsedIdx; }

  /** The device's used index as published. */
  get deviceUsedIdx(): number { return Atomics.load(this.used16, 1); }

  hasUsed(): boolean {
    return this.deviceUsedIdx !== this.lastUsed;
  }

  /** Take the next used element and free its descriptors; undefined when there is none. */
  reap(): UsedElement | undefined {
    if (!this.hasUsed()) return undefined;
    const slot = this.lastUsed & this.mask;
    const id = this.used32[2 * slot];
    const len = this.used32[2 * slot + 1];
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    const chain = id < this.size ? this.chains[id] : undefined;
    if (chain === undefined) {
      this.unknownUsed++;
      return { id, len, known: false };
    }
    this.chains[id] = undefined;
    for (let i = chain.length - 1; i >= 0; i--) this.freeStack[this.freeTop++] = chain[i];
    this.freeTable(id);
    return { id, len, known: true };
  }

  /**
   * Ask for an interrupt at the next used element. Returns true if used elements
   * are already pending, in which case the caller must reap (no interrupt may come).
   */
  enableInterrupts(): boolean {
    if (this.o.eventIdx) {
      Atomics.store(this.avail, 2 + this.size, this.lastUsed);
    } else {
      Atomics.store(this.avail, 0, Atomics.load(this.avail, 0) & ~VRING_AVAIL_F_NO_INTERRUPT);
    }
    // The seq-cst store above keeps this load after it.
    return this.hasUsed();
  }

  disableInterrupts(): void {
    if (this.o.eventIdx) {
      // With EVENT_IDX the flags must stay 0 (virtio 2.7.10); an event index just
      // behind what we reaped is not crossed until the used index wraps.
      Atomics.store(this.avail, 2 + this.size, (this.lastUsed - 1) & 0xffff);
    } else {
      Atomics.store(this.avail, 0, Atomics.load(this.avail, 0) | VRING_AVAIL_F_NO_INTERRUPT);
    }
  }

  // ---- what the device published (for assertions) --------------------------

  get usedFlags(): number { return Atomics.load(this.used16, 0); }
  get availEvent(): number { return Atomics.load(this.used16, 2 + 4 * this.size); }
  get availFlags(): number { return Atomics.load(this.avail, 0); }
  get usedEvent(): number { return Atomics.load(this.avail, 2 + this.size); }
  get publishedAvailIdx(): number { return Atomics.load(this.avail, 1); }

  // ---- raw access for hostile-driver tests ------------------------------------
  // These bypass the free-descriptor bookkeeping: a queue driven raw should not
  // also be used through add()/reap() for the same descriptors.

  writeDescriptor(index: number, d: Descriptor): void {
    if (!(index >= 0 && index < this.size)) throw new RangeError(`descriptor ${index} outside a table of ${this.size}`);
    this.writeDescAt(this.desc, DESC_SIZE * index, d);
  }

  readDescriptor(index: number): Descriptor {
    if (!(index >= 0 && index < this.size)) throw new RangeError(`descriptor ${index} outside a table of ${this.size}`);
    const o = DESC_SIZE * index;
    const v = this.desc;
    return { addr: v.getUint32(o + 4, true) * 0x1_0000_0000 + v.getUint32(o, true), len: v.getUint32(o + 8, true),
      flags: v.getUint16(o + 12, true), next: v.getUint16(o + 14, true) };
  }

  /** Write descriptors anywhere in guest memory (an indirect table, hostile or not). */
  writeTable(addr: number, descs: readonly Descriptor[]): void {
    descs.forEach((d, i) => this.writeDescAt(this.mem, addr + DESC_SIZE * i, d));
  }

  /** Put any value into avail.ring[slot & mask]. */
  setAvailEntry(slot: number, head: number): void {
    this.avail[2 + (slot & this.mask)] = head;
  }

  /** Append any head value to the available ring (unpublished). */
  pushAvail(head: number): void {
    this.setAvailEntry(this.availIdx, head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  /** Publish an arbitrary avail.idx (also becomes the next index add() fills). */
  setAvailIdx(idx: number): void {
    this.availIdx = idx & 0xffff;
    Atomics.store(this.avail, 1, this.availIdx);
  }

  setAvailFlags(flags: number): void { Atomics.store(this.avail, 0, flags); }
  setUsedEvent(idx: number): void { Atomics.store(this.avail, 2 + this.size, idx & 0xffff); }

  /** Read used.ring[slot & mask] without reaping. */
  peekUsed(slot: number): { id: number; len: number } {
    const s = slot & this.mask;
    return { id: this.used32[2 * s], len: this.used32[2 * s + 1] };
  }

  private writeDescAt(view: DataView, off: number, d: Descriptor): void {
    setAddr(view, off, d.addr);
    view.setUint32(off + 8, d.len, true);
    view.setUint16(off + 12, d.flags, true);
    view.setUint16(off + 14, d.next, true);
  }
}

function flagsOf(b: DriverBuffer, hasNext: boolean): number {
  return (b.writable ? VRING_DESC_F_WRITE : 0) | (hasNext ? VRING_DESC_F_NEXT : 0);
}

/** vring_need_event() of the virtio spec: did the index move past `event` in (old, now]? */
export function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}
