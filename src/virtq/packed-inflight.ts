// In-flight I/O tracking for a packed virtqueue (vhost-user spec, "Inflight I/O
// tracking", QueueRegionPacked): one region per queue in memory the front-end
// keeps, so that after this process dies the next one can submit again what was
// taken from the ring and never returned.
//
// Unlike a split ring's, a packed ring's descriptors are overwritten by used
// elements while other requests are still in flight, so the region keeps a copy
// of every descriptor taken: entries of a free list, one chain of entries per
// request (head entry: in-flight mark, counter, count, last entry). Entries go
// back to the free list when their used elements are published; the "old_"
// copies of free_head and the used position are the committed state a crash
// rolls back to (or forward, if the ring shows the batch was published).
//
// Layout (little endian, the spec's structs with C alignment):
//   header  features u64 @0, version u16 @8, desc_num u16 @10, free_head u16 @12,
//           old_free_head u16 @14, used_idx u16 @16, old_used_idx u16 @18,
//           used_wrap_counter u8 @20, old_used_wrap_counter u8 @21, padding to 32
//   desc[e] @32+32e: inflight u8 @0, padding u8, next u16 @2, last u16 @4, num u16 @6,
//           counter u64 @8, id u16 @16, flags u16 @18, len u32 @20, addr u64 @24
import { DescPool } from './desc-pool';
import { INFLIGHT_VERSION, InflightRecovery } from './inflight';
import { QueueRegionViews } from './queue-region';

export const PACKED_REGION_HEADER_BYTES = 32;
export const PACKED_DESC_STATE_BYTES = 32;
const QUEUE_REGION_ALIGNMENT = 64;

const U16_VERSION = 4;
const U16_DESC_NUM = 5;
const U16_FREE_HEAD = 6;
const U16_OLD_FREE_HEAD = 7;
const U16_USED_IDX = 8;
const U16_OLD_USED_IDX = 9;
const U8_USED_WRAP = 20;
const U8_OLD_USED_WRAP = 21;
const inflightU8 = (e: number): number => 32 + 32 * e;
const nextU16 = (e: number): number => 17 + 16 * e;
const lastU16 = (e: number): number => 18 + 16 * e;
const numU16 = (e: number): number => 19 + 16 * e;
const idU16 = (e: number): number => 24 + 16 * e;
const flagsU16 = (e: number): number => 25 + 16 * e;
const counterU32 = (e: number): number => 10 + 8 * e;
const lenU32 = (e: number): number => 13 + 8 * e;
const addrU32 = (e: number): number => 14 + 8 * e;

/** Bytes of one queue's packed region, rounded up to a cache line like the split layout (DPDK does the same). */
export function packedInflightQueueBytes(queueSize: number): number {
  return Math.ceil((PACKED_REGION_HEADER_BYTES + PACKED_DESC_STATE_BYTES * queueSize) / QUEUE_REGION_ALIGNMENT) * QUEUE_REGION_ALIGNMENT;
}

const AVAIL_BIT = 1 << 7;
const USED_BIT = 1 << 15;

/** Recovery's access to the flags of the ring's descriptors. */
export interface RingFlags {
  flags(pos: number): number;
  setFlags(pos: number, flags: number): void;
}

/** What packed recovery found, beyond the common InflightRecovery (heads are buffer ids here). */
export interface PackedRecovery extends InflightRecovery {
  /** Head entry of each recovered request, in the order of `heads`. */
  entries: Uint16Array;
  /** Committed used position and wrap counter (the ring resumes there). */
  usedIdx: number;
  usedWrap: number;
}

/** One queue's QueueRegionPacked, on whichever thread owns the queue. */
export class PackedInflight extends QueueRegionViews {
  constructor(buffer: ArrayBuffer, byteOffset: number, descNum: number) {
    super(buffer, byteOffset, descNum, packedInflightQueueBytes(descNum));
  }

  get version(): number { return this.u16[U16_VERSION]; }
  get usedIdx(): number { return this.u16[U16_USED_IDX]; }
  isInflight(entry: number): boolean { return this.u8[inflightU8(entry)] !== 0; }
  numOf(entry: number): number { return this.u16[numU16(entry)]; }

  /**
   * A chain of `n` ring descriptors (copied in `pool` from slot `first` on)
   * was taken: copy it into entries from the free list and mark its head entry
   * in flight. Returns the head entry, or -1 if the free list is broken. The
   * committed free head moves last: a crash before it leaves the entries on the
   * free list, and recovery clears the mark of anything on it.
   */
  mark(pool: DescPool, first: number, n: number): number {
    const u16 = this.u16;
    const u32 = this.u32;
    const head = u16[U16_FREE_HEAD];
    let e = head;
    let last = head;
    for (let k = 0, p = first; k < n; k++, p = pool.next[p]) {
      if (e >= this.descNum) return -1;
      u16[idU16(e)] = pool.id[p];
      u16[flagsU16(e)] = pool.flags[p];
      u32[lenU32(e)] = pool.len[p];
      u32[addrU32(e)] = pool.lo[p];
      u32[addrU32(e) + 1] = pool.hi[p];
      last = e;
      e = u16[nextU16(e)];
    }
    this.stampCounter(counterU32(head));
    u16[numU16(head)] = n;
    u16[lastU16(head)] = last;
    this.u8[inflightU8(head)] = 1;
    u16[U16_FREE_HEAD] = e;
    Atomics.store(u16, U16_OLD_FREE_HEAD, e);
    return head;
  }

  /**
   * Before a batch of used elements is published: give the batch's entries
   * back to the free list and record the used position after it. Nothing here is
   * committed until commit(); a crash in between is rolled back or forward.
   */
  release(heads: Uint16Array, count: number, usedIdx: number, usedWrap: number): void {
    const u16 = this.u16;
    for (let i = 0; i < count; i++) {
      const e = heads[i];
      u16[nextU16(u16[lastU16(e)])] = u16[U16_FREE_HEAD];
      u16[U16_FREE_HEAD] = e;
    }
    u16[U16_USED_IDX] = usedIdx;
    this.u8[U8_USED_WRAP] = usedWrap;
  }

  /** The batch was published in the ring: clear its marks and commit the new state, used index last. */
  commit(heads: Uint16Array, count: number): void {
    const u8 = this.u8;
    const u16 = this.u16;
    for (let i = 0; i < count; i++) u8[inflightU8(heads[i])] = 0;
    u16[U16_OLD_FREE_HEAD] = u16[U16_FREE_HEAD];
    u8[U8_OLD_USED_WRAP] = u8[U8_USED_WRAP];
    Atomics.store(u16, U16_OLD_USED_IDX, u16[U16_USED_IDX]);
  }

  /** Copy the descriptor kept in `entry` into slot `slot` of `pool`; returns the entry after it in its chain. */
  copyEntry(entry: number, pool: DescPool, slot: number): number {
    const u16 = this.u16;
    const u32 = this.u32;
    pool.id[slot] = u16[idU16(entry)];
    pool.flags[slot] = u16[flagsU16(entry)];
    pool.len[slot] = u32[lenU32(entry)];
    pool.lo[slot] = u32[addrU32(entry)];
    pool.hi[slot] = u32[addrU32(entry) + 1];
    return u16[nextU16(entry)];
  }

  /**
   * Ring start: settle a half-done batch (published → commit it, else roll it
   * back), clear the marks of free entries, and list the requests still in
   * flight, oldest first. `ringFlags(pos)` reads the flags of a ring descriptor;
   * `usedIdx`/`usedWrap` are SET_VRING_BASE's, used for a blank region. Control path.
   */
  recover(ringSize: number, usedIdx: number, usedWrap: number, ring: RingFlags): PackedRecovery {
    const u8 = this.u8;
    const u16 = this.u16;
    if (u16[U16_VERSION] === 0) return this.initialise(usedIdx, usedWrap, undefined);
    const bad = this.checkHeader(ringSize);
    if (bad !== undefined) return this.initialise(usedIdx, usedWrap, bad);

    let fixedUp = 0;
    let fixedUpMarked = 0;
    if (u16[U16_USED_IDX] !== u16[U16_OLD_USED_IDX] || u8[U8_USED_WRAP] !== u8[U8_OLD_USED_WRAP]) {
      // A batch was being returned. Its first used element is written last, at
      // the committed used position: if the guest can see it, so can it the rest.
      // Published, its USED bit is the lap's wrap counter; before, the driver's
      // available flags have the opposite; and a driver that already took it and
      // offered the slot again for the next lap leaves USED as it was.
      const w = u8[U8_OLD_USED_WRAP];
      const published = ((ring.flags(u16[U16_OLD_USED_IDX]) >> 15) & 1) === w;
      fixedUp = 1;
      if (published) {
        u16[U16_OLD_FREE_HEAD] = u16[U16_FREE_HEAD];
        u8[U8_OLD_USED_WRAP] = u8[U8_USED_WRAP];
        u16[U16_OLD_USED_IDX] = u16[U16_USED_IDX];
      } else {
        this.unpublish(ringSize, ring);
      }
    }
    u16[U16_FREE_HEAD] = u16[U16_OLD_FREE_HEAD];
    u8[U8_USED_WRAP] = u8[U8_OLD_USED_WRAP];
    u16[U16_USED_IDX] = u16[U16_OLD_USED_IDX];

    // Anything on the free list is not in flight (a published batch, a half-taken chain).
    const onFreeList = new Uint8Array(this.descNum);
    for (let e = u16[U16_FREE_HEAD], steps = 0; e < this.descNum; e = u16[nextU16(e)]) {
      if (onFreeList[e] !== 0 || ++steps > this.descNum) return this.initialise(usedIdx, usedWrap, 'free list loops');
      onFreeList[e] = 1;
      if (u8[inflightU8(e)] !== 0) fixedUpMarked++;
      u8[inflightU8(e)] = 0;
    }

    const heads: number[] = [];
    for (let e = 0; e < this.descNum; e++) if (u8[inflightU8(e)] !== 0) heads.push(e);
    this.sortByCounter(heads, counterU32);
    const why = this.checkChains(heads, onFreeList, ringSize);
    if (why !== undefined) return this.initialise(usedIdx, usedWrap, why);
    const ids = heads.map((h) => u16[idU16(this.lastEntryOf(h))]);
    return {
      heads: Uint16Array.from(ids), entries: Uint16Array.from(heads), initialised: false, fixedUp, fixedUpMarked,
      usedIdx: u16[U16_USED_IDX], usedWrap: u8[U8_USED_WRAP],
    };
  }

  /**
   * Rolling a batch back: the elements after its first may have been flagged
   * already (they are flagged last to first). The guest has not looked at them,
   * as it reads in order and the first is not flagged, but it would once the
   * requests resubmitted are returned there: give those slots back their
   * available flags, as the driver left them.
   */
  private unpublish(ringSize: number, ring: RingFlags): void {
    const u8 = this.u8;
    const u16 = this.u16;
    let pos = u16[U16_OLD_USED_IDX];
    let wrap = u8[U8_OLD_USED_WRAP];
    for (let n = 0; n < ringSize && (pos !== u16[U16_USED_IDX] || wrap !== u8[U8_USED_WRAP]); n++) {
      const flags = ring.flags(pos);
      if (((flags >> 15) & 1) === wrap) ring.setFlags(pos, (flags & ~(AVAIL_BIT | USED_BIT)) | (wrap === 1 ? AVAIL_BIT : USED_BIT));
      if (++pos === ringSize) {
        pos = 0;
        wrap ^= 1;
      }
    }
  }

  private checkHeader(ringSize: number): string | undefined {
    const u16 = this.u16;
    if (u16[U16_VERSION] !== INFLIGHT_VERSION) return `unknown region version ${u16[U16_VERSION]}`;
    if (u16[U16_DESC_NUM] !== this.descNum) return `region laid out for ${u16[U16_DESC_NUM]} descriptors, expected ${this.descNum}`;
    if (ringSize > this.descNum) return `ring of ${ringSize} descriptors, region has ${this.descNum}`;
    for (const i of [U16_USED_IDX, U16_OLD_USED_IDX]) if (u16[i] >= ringSize) return `used index ${u16[i]} beyond the ring of ${ringSize}`;
    if (this.u8[U8_USED_WRAP] > 1 || this.u8[U8_OLD_USED_WRAP] > 1) return 'wrap counter neither 0 nor 1';
    return undefined;
  }

  /** Why the chains of the in-flight heads cannot be resubmitted; undefined when they can. */
  private checkChains(heads: number[], onFreeList: Uint8Array, ringSize: number): string | undefined {
    const used = onFreeList; // entries seen so far, free or in a chain
    const ids = new Uint8Array(ringSize);
    let total = 0;
    for (const h of heads) {
      const n = this.u16[numU16(h)];
      if (n < 1 || n > ringSize) return `in-flight entry ${h} has ${n} descriptors`;
      total += n;
      let e = h;
      for (let k = 0; k < n; k++) {
        if (e >= this.descNum) return `chain of entry ${h} runs off the region`;
        if (used[e] !== 0) return `entry ${e} is in two chains or on the free list`;
        used[e] = 1;
        if (k < n - 1) e = this.u16[nextU16(e)];
      }
      if (e !== this.u16[lastU16(h)]) return `chain of entry ${h} does not end at its last entry`;
      const id = this.u16[idU16(e)];
      if (id >= ringSize || ids[id] !== 0) return `in-flight buffer id ${id} out of range or repeated`;
      ids[id] = 1;
    }
    if (total > ringSize) return `${total} descriptors in flight, the ring has ${ringSize}`;
    return undefined;
  }

  private lastEntryOf(head: number): number { return this.u16[lastU16(head)]; }

  /** Start afresh: every entry free, in order; the version goes last, so a crash in here leaves a blank region. */
  private initialise(usedIdx: number, usedWrap: number, discarded: string | undefined): PackedRecovery {
    const u16 = this.u16;
    const u8 = this.u8;
    u16[U16_VERSION] = 0;
    u8.fill(0, PACKED_REGION_HEADER_BYTES);
    for (let e = 0; e < this.descNum; e++) u16[nextU16(e)] = e + 1;
    u16[U16_DESC_NUM] = this.descNum;
    u16[U16_FREE_HEAD] = 0;
    u16[U16_OLD_FREE_HEAD] = 0;
    u16[U16_USED_IDX] = usedIdx;
    u16[U16_OLD_USED_IDX] = usedIdx;
    u8[U8_USED_WRAP] = usedWrap;
    u8[U8_OLD_USED_WRAP] = usedWrap;
    Atomics.store(u16, U16_VERSION, INFLIGHT_VERSION);
    this.resetCounter();
    const r: PackedRecovery = {
      heads: new Uint16Array(0), entries: new Uint16Array(0), initialised: true, fixedUp: 0, fixedUpMarked: 0, usedIdx, usedWrap,
    };
    if (discarded !== undefined) r.discarded = discarded;
    return r;
  }
}
