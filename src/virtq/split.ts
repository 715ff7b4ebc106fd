// Split virtqueue (virtio 1.2 §2.7) over guest memory mapped in this process.
//
// The guest owns the descriptor table and the available ring and may change
// them at any moment, so every index and address read from them is treated as
// hostile: heads are range-checked, chains are bounded, buffers are checked
// against the memory table. Nothing here allocates per request: chain walks fill
// the preallocated arrays of a Chain. With an in-flight region (inflight.ts) every
// head taken is marked there, so a new process can take over after a crash.
import { DirtyLog } from '../memory/dirty-log';
import { GuestMemory } from '../memory/guest-memory';
import {
  CHAIN_BAD_HEAD, CHAIN_BAD_INDIRECT, CHAIN_BAD_NEXT, CHAIN_NESTED_INDIRECT, CHAIN_OK, CHAIN_TOO_LONG, Chain, DESC_SIZE,
  MAX_QUEUE_SIZE, mapIndirectTable,
} from './chain';
import { InFlightSet } from './in-flight-set';
import { InflightRecovery, SplitInflight } from './inflight';
import { Virtqueue } from './virtqueue';

export * from './chain';

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_USED_F_NO_NOTIFY = 1;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;

export interface SplitRingLayout {
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
}

/** Why a ring could not be set up; undefined when it could. */
export function checkRingLayout(mem: GuestMemory, l: SplitRingLayout): string | undefined {
  if (!(l.size >= 1 && l.size <= MAX_QUEUE_SIZE && (l.size & (l.size - 1)) === 0)) return `bad queue size ${l.size}`;
  if (l.descAddr % 16 !== 0) return 'descriptor table not 16-byte aligned';
  if (l.availAddr % 2 !== 0) return 'available ring not 2-byte aligned';
  if (l.usedAddr % 4 !== 0) return 'used ring not 4-byte aligned';
  if (!mem.access(l.descAddr, DESC_SIZE * l.size)) return 'descriptor table outside guest memory';
  if (!mem.access(l.availAddr, 6 + 2 * l.size)) return 'available ring outside guest memory';
  if (!mem.access(l.usedAddr, 6 + 8 * l.size)) return 'used ring outside guest memory';
  return undefined;
}

export class SplitQueue implements Virtqueue {
  readonly size: number;
  private readonly mask: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;

  private desc!: DataView;
  private descOff = 0;
  /** flags, idx, ring[size], used_event */
  private avail!: Uint16Array;
  /** flags, idx, (ring as u32 pairs), avail_event */
  private used16!: Uint16Array;
  private used32!: Uint32Array;

  /** Next available-ring index to take. */
  lastAvail: number;
  /** Available index as last read from the guest. */
  private shadowAvail: number;
  /** Next used-ring index to fill. */
  usedIdx = 0;
  /** Used index as of the last interrupt decision (for EVENT_IDX). */
  private signalledUsed = 0;
  /** Heads taken and not yet returned: a driver may not offer one again meanwhile (virtio 2.7.13). */
  private readonly taken: InFlightSet;
  /** The guest broke the ring's rules; it stays stopped until reset. */
  broken = false;
  brokenReason = '';
  /** The front-end's in-flight region for this queue (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), if any. */
  private inflight: SplitInflight | undefined;
  /** Heads found in flight at start, oldest first; pop() hands them out before any new one. */
  private resubmit: Uint16Array = new Uint16Array(0);
  private resubmitNext = 0;
  /** Used index as of the last commit to the in-flight region. */
  private committedUsed = 0;
  /** Where push() walks a chain again to log its pages during a migration (made on first use). */
  private logChain: Chain | undefined;

  constructor(private readonly mem: GuestMemory, readonly layout: SplitRingLayout, baseIdx: number,
              features: { eventIdx: boolean; indirect: boolean }) {
    this.size = layout.size;
    this.mask = layout.size - 1;
    this.eventIdx = features.eventIdx;
    this.indirect = features.indirect;
    this.lastAvail = baseIdx & 0xffff;
    this.shadowAvail = this.lastAvail;
    this.taken = new InFlightSet(layout.size);
    const why = this.remap();
    if (why !== undefined) throw new RangeError(why);
    this.usedIdx = Atomics.load(this.used16, 1);
    this.signalledUsed = this.usedIdx;
  }

  /** (Re)build views after the memory table changed; returns why the ring is no longer mapped. */
  remap(): string | undefined {
    const mem = this.mem;
    const l = this.layout;
    const why = checkRingLayout(mem, l);
    if (why !== undefined) return why;
    // Build every view before replacing any, so a failure leaves the old ones whole.
    mem.access(l.descAddr, DESC_SIZE * l.size);
    const desc = mem.view;
    const descOff = mem.offset;
    mem.access(l.availAddr, 6 + 2 * l.size);
    const availBuffer = mem.buffer;
    const availOff = mem.offset;
    mem.access(l.usedAddr, 6 + 8 * l.size);
    // Ring addresses are aligned (checked above); a window offset keeps that
    // alignment only if the region itself starts aligned, which the control plane requires.
    if (availOff % 2 !== 0 || mem.offset % 4 !== 0) return 'ring misaligned within its memory region';
    this.desc = desc;
    this.descOff = descOff;
    this.avail = new Uint16Array(availBuffer, availOff, 3 + l.size);
    this.used16 = new Uint16Array(mem.buffer, mem.offset, 3 + 4 * l.size);
    this.used32 = new Uint32Array(mem.buffer, mem.offset + 4, 2 * l.size);
    return undefined;
  }

  markBroken(reason: string): void {
    this.broken = true;
    this.brokenReason = reason;
  }

  /**
   * Track requests in the front-end's in-flight region, recovering what a
   * previous process left there; call once, before the first pop(). The heads
   * still in flight are handed out again by pop() first, in the order they were
   * first taken, and the available ring resumes after every entry taken before:
   * each avail entry taken was either returned (counted in used.idx) or is still
   * in flight, so last_avail = used.idx + in flight (libvhost-user does the same).
   * That index replaces SET_VRING_BASE's, which after a crash is QEMU's guess
   * (7.2 sends the used index, as GET_VRING_BASE could not be asked); it agrees
   * with it after a clean stop, when nothing is in flight.
   */
  trackInflight(buffer: ArrayBuffer, byteOffset: number, descNum: number): InflightRecovery {
    if (this.inflight !== undefined) throw new Error('in-flight tracking is already set up');
    const region = new SplitInflight(buffer, byteOffset, descNum);
    if (region.descNum < this.size) throw new RangeError(`in-flight region has ${region.descNum} descriptors, queue ${this.size}`);
    const r = region.recover(this.usedIdx, this.size);
    this.inflight = region;
    this.committedUsed = this.usedIdx;
    if (!r.initialised) {
      this.resubmit = r.heads;
      this.resubmitNext = 0;
      this.lastAvail = (this.usedIdx + r.heads.length) & 0xffff;
      this.shadowAvail = this.lastAvail;
    }
    return r;
  }

  /** GET_VRING_BASE of a split ring: the next available index. */
  get base(): number { return this.lastAvail; }

  describe(): Record<string, number> { return { lastAvail: this.lastAvail, usedIdx: this.usedIdx }; }

  /** Heads recovered from the in-flight region and not handed out yet. */
  get pendingResubmits(): number { return this.resubmit.length - this.resubmitNext; }

  /** Whether the guest has made buffers available that we have not taken. */
  hasAvailable(): boolean {
    if (this.broken) return false;
    if (this.resubmitNext < this.resubmit.length) return true;
    if (this.lastAvail !== this.shadowAvail) return true;
    this.shadowAvail = Atomics.load(this.avail, 1);
    return this.lastAvail !== this.shadowAvail;
  }

  /** Take the next available head, or -1 if none (or the ring is broken). */
  pop(): number {
    if (this.resubmitNext < this.resubmit.length) return this.popResubmit();
    if (!this.hasAvailable()) return -1;
    if (((this.shadowAvail - this.lastAvail) & 0xffff) > this.size) {
      this.markBroken(`available index jumped from ${this.lastAvail} to ${this.shadowAvail} (queue size ${this.size})`);
      return -1;
    }
    const head = this.avail[2 + (this.lastAvail & this.mask)];
    // A head we cannot return (out of range) or one already in flight would make
    // two requests share per-head state; the ring is unusable until reset.
    if (head >= this.size) {
      this.markBroken(`head ${head} out of range (queue size ${this.size})`);
      return -1;
    }
    if (this.taken.has(head)) {
      this.markBroken(`head ${head} made available again while in flight`);
      return -1;
    }
    this.taken.add(head);
    // Marked before the caller starts the request, and before last_avail moves
    // on: from here a crash resubmits the head instead of losing it.
    if (this.inflight !== undefined) this.inflight.mark(head);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return head;
  }

  /**
   * The next recovered head. It keeps its mark and counter: if we die again
   * before it completes, it is still in flight and still older than new heads.
   */
  private popResubmit(): number {
    if (this.broken) return -1;
    const head = this.resubmit[this.resubmitNext++];
    this.taken.add(head);
    return head;
  }

  get inFlight(): number { return this.taken.count; }

  /** Call `done` once every request in flight now has been returned (at once if none is). */
  whenInFlightDone(done: () => void): void {
    this.taken.whenDone(done);
  }

  /**
   * Walk the chain starting at `head` into `chain`. Returns CHAIN_OK or an error code;
   * on error `chain` holds what was gathered so far and must not be used for I/O.
   */
  walk(head: number, chain: Chain): number {
    chain.reset(head);
    if (head >= this.size) return CHAIN_BAD_HEAD;
    let table = this.desc;
    let tableOff = this.descOff;
    let tableLen = this.size;
    let i = head;
    let inIndirect = false;
    let steps = 0;
    const mem = this.mem;
    for (;;) {
      if (++steps > tableLen) return CHAIN_TOO_LONG;
      const o = tableOff + i * DESC_SIZE;
      const lo = table.getUint32(o, true);
      const hi = table.getUint32(o + 4, true);
      const len = table.getUint32(o + 8, true);
      const flags = table.getUint16(o + 12, true);
      const next = table.getUint16(o + 14, true);
      if (flags & VRING_DESC_F_INDIRECT) {
        // Only the head of a direct chain may point at an indirect table, and it
        // must be the whole chain (virtio 2.7.5.3.1).
        if (inIndirect || !this.indirect || i !== head || (flags & VRING_DESC_F_NEXT)) return CHAIN_NESTED_INDIRECT;
        tableLen = mapIndirectTable(mem, lo, hi, len);
        if (tableLen < 0) return CHAIN_BAD_INDIRECT;
        table = mem.view;
        tableOff = mem.offset;
        inIndirect = true;
        steps = 0;
        i = 0;
        continue;
      }
      const err = chain.add(mem, lo, hi, len, (flags & VRING_DESC_F_WRITE) !== 0);
      if (err !== CHAIN_OK) return err;
      if (!(flags & VRING_DESC_F_NEXT)) return CHAIN_OK;
      if (next >= tableLen) return CHAIN_BAD_NEXT;
      i = next;
    }
  }

  /** Put a used element; it becomes visible to the guest at publish(). */
  push(head: number, writtenLen: number): void {
    this.taken.remove(head);
    // A broken ring may no longer be mapped (its descriptors cannot be walked to
    // log the request's pages either); the guest must reset the device anyway.
    if (this.broken) return;
    const log = this.mem.dirtyLog;
    if (log !== undefined) this.logWrites(log, head);
    const slot = this.usedIdx & this.mask;
    const i = slot * 2;
    this.used32[i] = head;
    this.used32[i + 1] = writtenLen;
    log?.mark(this.layout.usedAddr + 4 + 8 * slot, 8);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    // Into the batch the next publish() commits; until then the head stays marked.
    if (this.inflight !== undefined) this.inflight.link(head);
  }

  /**
   * Migration: the pages of the request's device-writable buffers, written
   * before it was returned. The chain is walked again: the guest may not change
   * it before the request is used.
   */
  private logWrites(log: DirtyLog, head: number): void {
    const chain = (this.logChain ??= new Chain());
    if (this.walk(head, chain) === CHAIN_OK) chain.logWrites(log);
  }

  /** Make pushed elements visible and say whether the guest wants an interrupt for them. */
  publish(): boolean {
    if (this.broken) return false;
    // Seq-cst store: the used elements are visible before the index, and the
    // following load of used_event/flags cannot move above it (virtio 2.7.7.2).
    Atomics.store(this.used16, 1, this.usedIdx);
    this.mem.dirtyLog?.mark(this.layout.usedAddr + 2, 2);
    const newIdx = this.usedIdx;
    // Only now, with the guest able to see the batch, may its marks go.
    if (this.inflight !== undefined && newIdx !== this.committedUsed) {
      this.inflight.commit((newIdx - this.committedUsed) & 0xffff, newIdx);
      this.committedUsed = newIdx;
    }
    const oldIdx = this.signalledUsed;
    if (newIdx === oldIdx) return false;
    this.signalledUsed = newIdx;
    if (this.eventIdx) {
      const usedEvent = Atomics.load(this.avail, 2 + this.size);
      return ((newIdx - usedEvent - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
    }
    return (Atomics.load(this.avail, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Ask the guest not to kick while we are draining the ring anyway. */
  suppressKicks(): void {
    if (this.broken) return;
    if (this.eventIdx) return;
    Atomics.store(this.used16, 0, Atomics.load(this.used16, 0) | VRING_USED_F_NO_NOTIFY);
    this.mem.dirtyLog?.mark(this.layout.usedAddr, 2);
  }

  /**
   * Ask for kicks again. Returns true if buffers became available meanwhile, in
   * which case the caller must keep draining (the guest may not kick for them).
   */
  allowKicks(): boolean {
    if (this.broken) return false;
    if (this.eventIdx) {
      Atomics.store(this.used16, 2 + 4 * this.size, this.lastAvail);
      this.mem.dirtyLog?.mark(this.layout.usedAddr + 4 + 8 * this.size, 2);
    } else {
      Atomics.store(this.used16, 0, Atomics.load(this.used16, 0) & ~VRING_USED_F_NO_NOTIFY);
      this.mem.dirtyLog?.mark(this.layout.usedAddr, 2);
    }
    // The seq-cst store above orders this reload after it (store-load barrier).
    return this.hasAvailable();
  }
}
