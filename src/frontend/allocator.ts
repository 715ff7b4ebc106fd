// First-fit allocator over a range of guest physical addresses. Pure
// bookkeeping: it never touches memory, so unit tests can use it over a plain
// ArrayBuffer and GuestRam over a memfd mapping.

/** Every block is a multiple of this, so freed blocks coalesce into useful sizes. */
const GRANULE = 16;

interface Block {
  start: number;
  size: number;
}

export class RangeAllocator {
  /** Free blocks sorted by address, never adjacent (adjacent ones are merged). */
  private freeList: Block[] = [];
  /** Size of each live allocation, keyed by the address handed out. */
  private readonly live = new Map<number, number>();

  constructor(readonly base: number, readonly size: number) {
    if (!Number.isSafeInteger(base) || base < 0 || !Number.isSafeInteger(size) || size <= 0) {
      throw new RangeError(`bad allocator range ${base}+${size}`);
    }
    this.reset();
  }

  /** Forget every allocation. */
  reset(): void {
    this.freeList = [{ start: this.base, size: this.size }];
    this.live.clear();
  }

  get freeBytes(): number {
    let n = 0;
    for (const b of this.freeList) n += b.size;
    return n;
  }

  get liveCount(): number { return this.live.size; }

  /** Address of `size` bytes aligned to `align` (a power of two), or -1 when nothing fits. */
  tryAlloc(size: number, align = GRANULE): number {
    if (!(Number.isSafeInteger(size) && size > 0)) throw new RangeError(`allocation size ${size} is not a positive integer`);
    if (!(align > 0 && (align & (align - 1)) === 0)) throw new RangeError(`alignment ${align} is not a power of two`);
    const want = roundUp(size, GRANULE);
    const a = Math.max(align, GRANULE);
    for (let i = 0; i < this.freeList.length; i++) {
      const b = this.freeList[i];
      const start = roundUp(b.start, a);
      const end = b.start + b.size;
      if (start + want > end) continue;
      const pieces: Block[] = [];
      if (start > b.start) pieces.push({ start: b.start, size: start - b.start });
      if (start + want < end) pieces.push({ start: start + want, size: end - start - want });
      this.freeList.splice(i, 1, ...pieces);
      this.live.set(start, want);
      return start;
    }
    return -1;
  }

  /** Like tryAlloc, but running out of memory is an error. */
  alloc(size: number, align = GRANULE): number {
    const addr = this.tryAlloc(size, align);
    if (addr < 0) throw new RangeError(`out of guest memory: ${size} bytes wanted, ${this.freeBytes} free (fragmented)`);
    return addr;
  }

  free(addr: number): void {
    const size = this.live.get(addr);
    if (size === undefined) throw new RangeError(`free of 0x${addr.toString(16)}, which is not allocated`);
    this.live.delete(addr);
    const list = this.freeList;
    let i = 0;
    while (i < list.length && list[i].start < addr) i++;
    list.splice(i, 0, { start: addr, size });
    // Merge with the right neighbour first so index i stays valid for the left merge.
    if (i + 1 < list.length && addr + size === list[i + 1].start) {
      list[i].size += list[i + 1].size;
      list.splice(i + 1, 1);
    }
    if (i > 0 && list[i - 1].start + list[i - 1].size === addr) {
      list[i - 1].size += list[i].size;
      list.splice(i, 1);
    }
  }
}

export function roundUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}
