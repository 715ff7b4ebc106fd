// Copies of packed-ring descriptors for the requests in flight. A packed ring's
// slots are reused by the driver as soon as it has reaped the used elements
// written over them, which (with requests returned out of order) can be while
// the request that was taken from a slot is still in flight; so each request
// keeps its own copy, in slots of this pool linked into a chain. The device never
// holds more descriptors than the ring has, so a pool of ring size is enough.

export class DescPool {
  readonly lo: Uint32Array;
  readonly hi: Uint32Array;
  readonly len: Uint32Array;
  readonly flags: Uint16Array;
  readonly id: Uint16Array;
  /** The slot after each one: in a request's chain, or on the free list. */
  readonly next: Uint16Array;
  private freeHead = 0;

  constructor(readonly size: number) {
    this.lo = new Uint32Array(size);
    this.hi = new Uint32Array(size);
    this.len = new Uint32Array(size);
    this.flags = new Uint16Array(size);
    this.id = new Uint16Array(size);
    this.next = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.next[i] = i + 1;
  }

  /** A free slot, linked after `prev` (unless -1); -1 when none is free. */
  take(prev: number): number {
    const slot = this.freeHead;
    if (slot >= this.size) return -1;
    this.freeHead = this.next[slot];
    if (prev >= 0) this.next[prev] = slot;
    return slot;
  }

  /** Give back a chain of slots, `first` to `last` linked by next. */
  giveBack(first: number, last: number): void {
    this.next[last] = this.freeHead;
    this.freeHead = first;
  }
}
