// Guest memory backed by a plain ArrayBuffer, for unit tests that need no mmap.
// Host addresses are fake: FAKE_HOST_BASE + guest offset, which the in-memory
// engine maps back.
import { GuestMemory, GuestRegion } from '../../src/memory/guest-memory';

export const FAKE_HOST_BASE = 0x7f0000000000;

export interface FakeGuest {
  mem: GuestMemory;
  bytes: Uint8Array;
  view: DataView;
}

/**
 * `size` bytes of guest memory at guest physical `gpa` (default 0): one region, or two
 * adjacent ones when `splitAt` (an offset into the memory) is given, so that buffers
 * can straddle a region boundary. Both regions share one buffer, and host addresses
 * stay FAKE_HOST_BASE + guest offset. Rings and anything else viewed through `buffer`
 * must lie in the first region.
 */
export function fakeGuest(size: number, gpa = 0, splitAt?: number): FakeGuest {
  const buffer = new ArrayBuffer(size);
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  const mem = new GuestMemory();
  const cuts = splitAt === undefined ? [[0, size]] : [[0, splitAt], [splitAt, size - splitAt]];
  for (const [start, len] of cuts) {
    const region: GuestRegion = {
      guestPhysAddr: gpa + start, size: len, userAddr: 0x10000000 + gpa + start, hostAddr: FAKE_HOST_BASE + gpa + start,
      // `buffer` must start where the window starts (views are built at buffer + offset);
      // the second region cannot have that over a shared buffer, so it gets an empty one:
      // building a view there throws instead of aliasing. Keep rings in the first region.
      windows: [{ buffer: start === 0 ? buffer : new ArrayBuffer(0), bytes: new Uint8Array(buffer, start, len), view: new DataView(buffer, start, len) }],
    };
    mem.add(region);
  }
  return { mem, bytes, view };
}

/** Write a split-ring descriptor. */
export function writeDesc(view: DataView, table: number, i: number, addr: number, len: number, flags: number, next: number): void {
  const o = table + 16 * i;
  view.setUint32(o, addr % 0x100000000, true);
  view.setUint32(o + 4, Math.floor(addr / 0x100000000), true);
  view.setUint32(o + 8, len, true);
  view.setUint16(o + 12, flags, true);
  view.setUint16(o + 14, next, true);
}

/** Put `heads` into the available ring and publish the index. */
export function makeAvailable(view: DataView, avail: number, size: number, heads: number[]): void {
  let idx = view.getUint16(avail + 2, true);
  for (const h of heads) {
    view.setUint16(avail + 4 + 2 * (idx % size), h, true);
    idx = (idx + 1) & 0xffff;
  }
  view.setUint16(avail + 2, idx, true);
}
