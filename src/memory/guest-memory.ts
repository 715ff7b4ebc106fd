// Guest memory as seen by the back-end: a small table of regions, each mapped
// into this process. Translation is the hot path of every request, so results
// are returned through fields of the table instead of freshly allocated tuples.
import { DirtyLog } from './dirty-log';

/**
 * JavaScript views over one mapping are cut into windows because a typed array
 * cannot exceed 4 GiB in Node 20. Windows overlap so that any object of up to
 * WINDOW_OVERLAP bytes (ring, header, status byte) lies wholly inside one window.
 */
export const WINDOW_SIZE = 1 << 30;
export const WINDOW_OVERLAP = 1 << 20;

export interface RegionDescriptor {
  /** Guest physical address of the first byte. */
  guestPhysAddr: number;
  size: number;
  /** Front-end (QEMU) virtual address of the first byte; vring addresses use these. */
  userAddr: number;
}

export interface RegionWindow {
  bytes: Uint8Array;
  view: DataView;
  buffer: ArrayBuffer;
}

export interface GuestRegion extends RegionDescriptor {
  /** Host virtual address of the region's first byte in this process. */
  hostAddr: number;
  windows: RegionWindow[];
}

export class GuestMemory {
  private regions: GuestRegion[] = [];
  /** While a migration logs dirty pages: where the writers of guest memory mark them. */
  dirtyLog: DirtyLog | undefined;

  // Results of the last successful translate()/access().
  /** Host address of the translated guest address. */
  hostAddr = 0;
  /** Bytes until the end of the region that holds the translated address. */
  contiguous = 0;
  /** Window and offset inside it for access(). */
  bytes: Uint8Array = new Uint8Array(0);
  view: DataView = new DataView(new ArrayBuffer(0));
  offset = 0;
  /** Window buffer for building aligned typed-array views (rings). */
  buffer: ArrayBuffer = new ArrayBuffer(0);

  get regionCount(): number { return this.regions.length; }
  list(): readonly GuestRegion[] { return this.regions; }

  /** Add a region; fails (returns false) if it overlaps an existing one in guest-physical space. */
  add(region: GuestRegion): boolean {
    for (const r of this.regions) {
      if (rangesOverlap(r.guestPhysAddr, r.size, region.guestPhysAddr, region.size)) return false;
    }
    this.regions.push(region);
    this.regions.sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    return true;
  }

  /** Remove and return the region with exactly this guest address and size. */
  remove(guestPhysAddr: number, size: number): GuestRegion | undefined {
    const i = this.regions.findIndex((r) => r.guestPhysAddr === guestPhysAddr && r.size === size);
    if (i < 0) return undefined;
    return this.regions.splice(i, 1)[0];
  }

  clear(): GuestRegion[] {
    const all = this.regions;
    this.regions = [];
    return all;
  }

  private find(gpa: number): GuestRegion | undefined {
    const regions = this.regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i];
      if (gpa >= r.guestPhysAddr && gpa - r.guestPhysAddr < r.size) return r;
    }
    return undefined;
  }

  /**
   * Translate the start of [gpa, gpa+len) to a host address. On success `hostAddr`
   * is set and `contiguous` says how many bytes from there stay in the same region
   * (a buffer may continue into an adjacent region: the caller loops).
   */
  translate(gpa: number, len: number): boolean {
    if (!(gpa >= 0 && len >= 0 && gpa + len <= Number.MAX_SAFE_INTEGER)) return false;
    const r = this.find(gpa);
    if (r === undefined) return false;
    const off = gpa - r.guestPhysAddr;
    this.hostAddr = r.hostAddr + off;
    this.contiguous = r.size - off;
    return true;
  }

  /** True if every byte of [gpa, gpa+len) is guest memory (possibly over adjacent regions). */
  covers(gpa: number, len: number): boolean {
    while (len > 0) {
      if (!this.translate(gpa, len)) return false;
      const n = Math.min(len, this.contiguous);
      gpa += n;
      len -= n;
    }
    return len === 0 && gpa >= 0;
  }

  /**
   * Locate [gpa, gpa+len) for access from JavaScript; len <= WINDOW_OVERLAP and the
   * range must lie in one region. Sets bytes/view/buffer and offset.
   */
  access(gpa: number, len: number): boolean {
    if (!(len >= 0 && len <= WINDOW_OVERLAP && gpa >= 0)) return false;
    const r = this.find(gpa);
    if (r === undefined) return false;
    const off = gpa - r.guestPhysAddr;
    if (len > r.size - off) return false;
    const w = r.windows.length === 1 ? 0 : Math.floor(off / WINDOW_SIZE);
    const win = r.windows[w];
    this.bytes = win.bytes;
    this.view = win.view;
    this.buffer = win.buffer;
    this.offset = off - w * WINDOW_SIZE;
    return true;
  }

  /** Translate a front-end virtual address to a guest physical address; -1 if unmapped. */
  userToGuest(uva: number, len: number): number {
    for (const r of this.regions) {
      if (uva >= r.userAddr && uva - r.userAddr < r.size && len <= r.size - (uva - r.userAddr)) {
        return r.guestPhysAddr + (uva - r.userAddr);
      }
    }
    return -1;
  }
}

export function rangesOverlap(a: number, alen: number, b: number, blen: number): boolean {
  return a < b + blen && b < a + alen;
}

/** Window layout for a mapping of `size` bytes: [start, length] pairs. */
export function windowLayout(size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let start = 0; start === 0 || start < size; start += WINDOW_SIZE) {
    out.push([start, Math.min(WINDOW_SIZE + WINDOW_OVERLAP, size - start)]);
  }
  return out;
}
