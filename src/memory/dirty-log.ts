// The dirty-page log of a live migration (vhost-user "Migration"): one bit per
// 4 KiB page of guest-physical memory, in memory the front-end shares with us
// (SET_LOG_BASE). While it is set, every guest page the back-end writes is
// marked, so the front-end sends it again. The front-end reads and clears the
// bits concurrently, hence atomic ORs; and a page is marked only after the
// write to it: a mark made earlier could be cleared by a sync before the write.

/** VHOST_LOG_PAGE. */
export const LOG_PAGE_SIZE = 0x1000;

export class DirtyLog {
  private readonly bits: Uint8Array;

  constructor(buffer: ArrayBuffer) {
    this.bits = new Uint8Array(buffer);
  }

  /** Mark every page of [gpa, gpa + len) dirty. */
  mark(gpa: number, len: number): void {
    if (len <= 0) return;
    const bits = this.bits;
    const last = Math.floor((gpa + len - 1) / LOG_PAGE_SIZE);
    for (let page = Math.floor(gpa / LOG_PAGE_SIZE); page <= last; page++) {
      const byte = Math.floor(page / 8);
      // The front-end sizes the log for all of guest memory; nothing beyond it is ours to mark.
      if (byte >= bits.length) return;
      Atomics.or(bits, byte, 1 << (page & 7));
    }
  }

  /** Whether the page holding `gpa` is marked (tests). */
  isDirty(gpa: number): boolean {
    const page = Math.floor(gpa / LOG_PAGE_SIZE);
    return (Atomics.load(this.bits, Math.floor(page / 8)) & (1 << (page & 7))) !== 0;
  }
}
