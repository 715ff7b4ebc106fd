// Mapping guest memory regions from the fds a front-end passes.
import { native } from '../native/addon';
import { GuestRegion, RegionDescriptor, RegionWindow, windowLayout } from './guest-memory';

const PAGE_SIZE = 4096;

/** A region mapped into this process; `unmap()` detaches every view before munmap. */
export interface MappedRegion extends GuestRegion {
  mapAddr: number;
  mapLength: number;
}

/**
 * Map `desc.size` bytes of `fd` starting at `mmapOffset`. mmap wants a page-aligned
 * offset; a front-end may pass any offset, so map from the page below and skip ahead.
 * The fd is not closed here: the caller owns it.
 */
export function mapRegion(fd: number, desc: RegionDescriptor, mmapOffset: number): MappedRegion {
  const skew = mmapOffset % PAGE_SIZE;
  const mapLength = desc.size + skew;
  const mapAddr = native.mmap(fd, mapLength, mmapOffset - skew, true);
  const hostAddr = mapAddr + skew;
  return {
    guestPhysAddr: desc.guestPhysAddr,
    size: desc.size,
    userAddr: desc.userAddr,
    hostAddr,
    mapAddr,
    mapLength,
    windows: makeWindows(hostAddr, desc.size),
  };
}

/** JavaScript views over an existing mapping (also used by threads that did not map it). */
export function makeWindows(hostAddr: number, size: number): RegionWindow[] {
  return windowLayout(size).map(([start, length]) => {
    const buffer = native.arrayBuffer(hostAddr + start, length);
    return { buffer, bytes: new Uint8Array(buffer), view: new DataView(buffer) };
  });
}

export function detachWindows(windows: RegionWindow[]): void {
  for (const w of windows) native.detach(w.buffer);
}

export function unmapRegion(region: MappedRegion): void {
  detachWindows(region.windows);
  native.munmap(region.mapAddr, region.mapLength);
}
