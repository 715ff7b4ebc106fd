// In-flight I/O tracking for a split virtqueue (vhost-user spec, "Inflight I/O
// tracking"): one QueueRegionSplit per queue in memory the front-end keeps
// (VHOST_USER_GET/SET_INFLIGHT_FD), so that after this process dies the next one
// knows which requests were taken from the available ring and never returned,
// and in which order they were taken.
//
// A crash can stop us between any two stores, so each store below is placed so
// that every prefix of them leaves a region recovery reads correctly. The
// region lives in a memfd, not in guest RAM: nothing but us (and our next
// incarnation) writes it, so its contents are trusted only after checks that
// keep a garbled region from hurting more than the tracking itself.
//
// Layout (little endian; libvhost-user's, which QEMU expects of any back-end):
//   header  features u64 @0, version u16 @8, desc_num u16 @10, last_batch_head u16 @12, used_idx u16 @14
//   desc[i] @16+16i: inflight u8 @0, padding[5], next u16 @6, counter u64 @8

import { QueueRegionViews } from './queue-region';

/** Version of the region layout; 0 in a region means "never initialised". */
export const INFLIGHT_VERSION = 1;
/** libvhost-user aligns every queue region to a cache line. */
const QUEUE_REGION_ALIGNMENT = 64;
export const QUEUE_REGION_HEADER_BYTES = 16;
export const DESC_STATE_BYTES = 16;
export const QUEUE_REGION_VERSION_OFFSET = 8;
export const QUEUE_REGION_DESC_NUM_OFFSET = 10;

// Indices into the typed views of one queue region.
const U16_VERSION = 4;
const U16_DESC_NUM = 5;
const U16_LAST_BATCH_HEAD = 6;
const U16_USED_IDX = 7;
const inflightByte = (head: number): number => 16 + 16 * head;
const nextU16 = (head: number): number => 11 + 8 * head;
const counterU32 = (head: number): number => 6 + 4 * head;

/**
 * Bytes of one queue's region. libvhost-user rounds 16 * queue_size + 2 up to 64
 * bytes (it counts the header as 2 bytes); for any queue size the rounding leaves
 * room for the real 16-byte header, and using the same size keeps regions
 * exchangeable with other back-ends.
 */
export function inflightQueueBytes(queueSize: number): number {
  return Math.ceil((DESC_STATE_BYTES * queueSize + 2) / QUEUE_REGION_ALIGNMENT) * QUEUE_REGION_ALIGNMENT;
}


/** What recovery found at ring start. */
export interface InflightRecovery {
  /** Requests taken and never returned before the previous process stopped, oldest first: submit these again (split: heads; packed: buffer ids). */
  heads: Uint16Array;
  /** The region was blank (version 0) and is now initialised: the ring starts from SET_VRING_BASE's index. */
  initialised: boolean;
  /** Split: used elements of a half-committed last batch whose in-flight marks were cleared. Packed: 1 when a batch was half done. */
  fixedUp: number;
  /** Of those, the marks that were still set: completed requests, not resubmitted. */
  fixedUpMarked: number;
  /** Why the region's contents were thrown away (it was reset as if blank); undefined when they were usable. */
  discarded?: string;
}

/** One queue's QueueRegionSplit, on whichever thread owns the queue. */
export class SplitInflight extends QueueRegionViews {
  constructor(buffer: ArrayBuffer, byteOffset: number, descNum: number) {
    super(buffer, byteOffset, descNum, inflightQueueBytes(descNum));
  }

  get version(): number { return this.u16[U16_VERSION]; }
  get lastBatchHead(): number { return this.u16[U16_LAST_BATCH_HEAD]; }
  get usedIdx(): number { return this.u16[U16_USED_IDX]; }
  isInflight(head: number): boolean { return this.u8[inflightByte(head)] !== 0; }
  /** The counter of `head` as a Number (exact below 2^53), for tests and logs. */
  counterOf(head: number): number { return this.counterAt(counterU32(head)); }

  /**
   * A head was taken from the available ring; call before its request starts.
   * The counter goes first and the flag last: a crash in between leaves the head
   * unmarked, and an unmarked head is taken from the available ring again,
   * because recovery counts only marked heads when it places last_avail.
   */
  mark(head: number): void {
    this.stampCounter(counterU32(head));
    this.u8[inflightByte(head)] = 1;
  }

  /**
   * A used element for `head` was written (not yet published): chain it onto the
   * current batch. Recovery needs the batch only if the used index was published
   * and the marks were not all cleared yet; until the publish, the marks stay
   * and the heads count as in flight, as the guest has not seen them.
   */
  link(head: number): void {
    const u16 = this.u16;
    u16[nextU16(head)] = u16[U16_LAST_BATCH_HEAD];
    u16[U16_LAST_BATCH_HEAD] = head;
  }

  /**
   * The ring's used index was just published with the last `count` linked heads:
   * clear their marks, then record the index. A crash before the final store
   * leaves used_idx behind the ring's index, which tells recovery to clear this
   * batch again (some marks may still be set).
   */
  commit(count: number, ringUsedIdx: number): void {
    const u8 = this.u8;
    const u16 = this.u16;
    let h = u16[U16_LAST_BATCH_HEAD];
    for (let i = 0; i < count; i++) {
      u8[inflightByte(h)] = 0;
      h = u16[nextU16(h)];
    }
    // Seq-cst: the cleared marks are stored before used_idx says they are.
    Atomics.store(u16, U16_USED_IDX, ringUsedIdx);
  }

  /**
   * Ring start: bring the region in line with the ring (whose used index is
   * `ringUsedIdx`) and list the heads still in flight, oldest first. The counter
   * continues after the newest of them, so they keep their place if we die again
   * before they complete. A blank region is initialised instead. Control path.
   */
  recover(ringUsedIdx: number, ringSize: number): InflightRecovery {
    const u16 = this.u16;
    if (u16[U16_VERSION] === 0) return this.initialise(ringUsedIdx, undefined);
    const bad = this.check(ringUsedIdx, ringSize);
    if (bad !== undefined) return this.initialise(ringUsedIdx, bad);

    // The spec's "last batch" fix-up: the used index went out but not all marks were cleared.
    const batch = (ringUsedIdx - u16[U16_USED_IDX]) & 0xffff;
    let fixedUpMarked = 0;
    for (let i = 0, h = u16[U16_LAST_BATCH_HEAD]; i < batch; i++, h = u16[nextU16(h)]) {
      if (this.u8[inflightByte(h)] !== 0) fixedUpMarked++;
    }
    if (batch !== 0) this.commit(batch, ringUsedIdx);

    const heads: number[] = [];
    for (let i = 0; i < ringSize; i++) if (this.u8[inflightByte(i)] !== 0) heads.push(i);
    this.sortByCounter(heads, counterU32);
    return { heads: Uint16Array.from(heads), initialised: false, fixedUp: batch, fixedUpMarked };
  }

  /** Why the region cannot describe this ring; undefined when it can. */
  private check(ringUsedIdx: number, ringSize: number): string | undefined {
    const u16 = this.u16;
    if (u16[U16_VERSION] !== INFLIGHT_VERSION) return `unknown region version ${u16[U16_VERSION]}`;
    if (u16[U16_DESC_NUM] !== this.descNum) return `region laid out for ${u16[U16_DESC_NUM]} descriptors, expected ${this.descNum}`;
    if (ringSize > this.descNum) return `ring of ${ringSize} descriptors, region has ${this.descNum}`;
    const batch = (ringUsedIdx - u16[U16_USED_IDX]) & 0xffff;
    if (batch > ringSize) return `used index ${ringUsedIdx} is ${batch} ahead of the region's ${u16[U16_USED_IDX]} (queue size ${ringSize})`;
    // The batch list is ours, but a garbled link would clear the wrong marks: walk it first.
    let h = u16[U16_LAST_BATCH_HEAD];
    for (let i = 0; i < batch; i++) {
      if (h >= ringSize) return `last batch links to descriptor ${h}, beyond the ring`;
      h = u16[nextU16(h)];
    }
    for (let i = ringSize; i < this.descNum; i++) {
      if (this.u8[inflightByte(i)] !== 0) return `descriptor ${i} is marked in flight but beyond the ring of ${ringSize}`;
    }
    return undefined;
  }

  /**
   * Start the region afresh: all descriptors idle, used_idx at the ring's. The
   * version goes last, so a crash in here leaves a region that is still blank.
   */
  private initialise(ringUsedIdx: number, discarded: string | undefined): InflightRecovery {
    const u16 = this.u16;
    u16[U16_VERSION] = 0;
    this.u8.fill(0, QUEUE_REGION_HEADER_BYTES);
    u16[U16_DESC_NUM] = this.descNum;
    u16[U16_LAST_BATCH_HEAD] = 0;
    u16[U16_USED_IDX] = ringUsedIdx;
    Atomics.store(u16, U16_VERSION, INFLIGHT_VERSION);
    this.resetCounter();
    const r: InflightRecovery = { heads: new Uint16Array(0), initialised: true, fixedUp: 0, fixedUpMarked: 0 };
    if (discarded !== undefined) r.discarded = discarded;
    return r;
  }
}
