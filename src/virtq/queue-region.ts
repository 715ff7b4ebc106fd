// What the split and packed in-flight regions (inflight.ts, packed-inflight.ts)
// share: typed views of one queue's region, and the u64 fetch counter that
// orders the requests taken, kept as two u32 words (no BigInt on the data path).

export abstract class QueueRegionViews {
  protected readonly u8: Uint8Array;
  protected readonly u16: Uint16Array;
  protected readonly u32: Uint32Array;
  /** The counter of the last request marked. */
  private counterLo = 0;
  private counterHi = 0;

  /**
   * @param buffer memory holding the region at `byteOffset` (a multiple of 8)
   * @param descNum descriptors the region was laid out for (VhostUserInflight.queue_size)
   * @param bytes size of the region
   */
  constructor(buffer: ArrayBuffer, byteOffset: number, readonly descNum: number, bytes: number) {
    if (byteOffset % 8 !== 0) throw new RangeError(`in-flight queue region at offset ${byteOffset} is not 8-byte aligned`);
    this.u8 = new Uint8Array(buffer, byteOffset, bytes);
    this.u16 = new Uint16Array(buffer, byteOffset, bytes / 2);
    this.u32 = new Uint32Array(buffer, byteOffset, bytes / 4);
  }

  /** Store the next counter value in the u64 at u32 index `c`. */
  protected stampCounter(c: number): void {
    const lo = (this.counterLo + 1) >>> 0;
    if (lo === 0) this.counterHi = (this.counterHi + 1) >>> 0;
    this.counterLo = lo;
    this.u32[c] = lo;
    this.u32[c + 1] = this.counterHi;
  }

  /** The u64 at u32 index `c` as a Number (exact below 2^53), for tests and logs. */
  protected counterAt(c: number): number {
    return this.u32[c + 1] * 0x1_0000_0000 + this.u32[c];
  }

  /**
   * Recovery: sort `entries` oldest first by their counters (at u32 index
   * `counterOf(entry)`), and go on counting after the newest of them.
   */
  protected sortByCounter(entries: number[], counterOf: (entry: number) => number): void {
    const u32 = this.u32;
    entries.sort((a, b) => {
      const ca = counterOf(a);
      const cb = counterOf(b);
      return u32[ca + 1] - u32[cb + 1] || u32[ca] - u32[cb];
    });
    this.resetCounter();
    if (entries.length > 0) {
      const c = counterOf(entries[entries.length - 1]);
      this.counterLo = u32[c];
      this.counterHi = u32[c + 1];
    }
  }

  /** A fresh region counts from the start. */
  protected resetCounter(): void {
    this.counterLo = 0;
    this.counterHi = 0;
  }
}
