// Guest RAM of our front-end: one memfd mapped into this process, guest
// physical addresses 0..size. As with QEMU, the "user address" of the memory
// table is where the front-end itself mapped the memory, so ring addresses in
// SET_VRING_ADDR are host addresses of our own mapping.
import * as fs from 'node:fs';
import type { MemoryRegion } from '../../protocol';
import { native } from '../native/addon';
import { RangeAllocator } from './allocator';

const PAGE_SIZE = 4096;
/** One ArrayBuffer covers the whole RAM; typed-array offsets stay well inside int32 range below this. */
export const MAX_GUEST_RAM = 1 << 30;
/**
 * Allocations start above the first page so that a zeroed descriptor (address 0)
 * never points at a live buffer; tests may use page 0 as scratch.
 */
const RESERVED_LOW = PAGE_SIZE;

export class GuestRam {
  readonly buffer: ArrayBuffer;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly allocator: RangeAllocator;
  private closed = false;

  private constructor(readonly fd: number, readonly size: number, readonly hostAddr: number) {
    this.buffer = native.arrayBuffer(hostAddr, size);
    this.bytes = new Uint8Array(this.buffer);
    this.view = new DataView(this.buffer);
    this.allocator = new RangeAllocator(RESERVED_LOW, size - RESERVED_LOW);
  }

  /** `size` bytes of zeroed, shareable memory (rounded up to whole pages). */
  static create(size: number, name = 'vublk-frontend-ram'): GuestRam {
    const bytes = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
    if (!(bytes > RESERVED_LOW && bytes <= MAX_GUEST_RAM)) {
      throw new RangeError(`guest RAM size ${size} not in ${RESERVED_LOW + 1}..${MAX_GUEST_RAM}`);
    }
    const fd = native.memfdCreate(name);
    try {
      fs.ftruncateSync(fd, bytes);
      const addr = native.mmap(fd, bytes, 0, true);
      return new GuestRam(fd, bytes, addr);
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  /** The memory-table entry describing this RAM; send it with `fd`. */
  region(): MemoryRegion {
    return { guestPhysAddr: 0, size: this.size, userAddr: this.hostAddr, mmapOffset: 0 };
  }

  /** Front-end virtual address of a guest physical address (what SET_VRING_ADDR carries). */
  userAddr(gpa: number): number {
    this.check(gpa, 0);
    return this.hostAddr + gpa;
  }

  alloc(size: number, align = 16): number {
    return this.allocator.alloc(size, align);
  }

  free(gpa: number): void {
    this.allocator.free(gpa);
  }

  write(gpa: number, data: Uint8Array): void {
    this.check(gpa, data.length);
    this.bytes.set(data, gpa);
  }

  fill(gpa: number, len: number, value: number): void {
    this.check(gpa, len);
    this.bytes.fill(value, gpa, gpa + len);
  }

  /** A copy of guest bytes: the device may change RAM later. */
  read(gpa: number, len: number): Uint8Array {
    this.check(gpa, len);
    return this.bytes.slice(gpa, gpa + len);
  }

  private check(gpa: number, len: number): void {
    if (this.closed) throw new Error('guest RAM is closed');
    if (!(gpa >= 0 && len >= 0 && gpa + len <= this.size)) {
      throw new RangeError(`guest range 0x${gpa.toString(16)}+${len} is outside guest RAM of ${this.size} bytes`);
    }
  }

  /** Unmap and close the memfd; views are detached first so stray access throws instead of faulting. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.detach(this.buffer);
    native.munmap(this.hostAddr, this.size);
    native.close(this.fd);
  }
}
