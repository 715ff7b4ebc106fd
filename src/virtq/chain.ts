// The buffers of one request, as a ring walker (split.ts, packed.ts) gathers
// them: the same shape for both ring layouts, so virtio-blk never knows which
// one the guest chose. Guest-supplied values are checked here once for both.
import { DirtyLog } from '../memory/dirty-log';
import { GuestMemory } from '../memory/guest-memory';

/** Largest queue this back-end accepts (QEMU's VIRTQUEUE_MAX_SIZE). */
export const MAX_QUEUE_SIZE = 1024;
/** Most buffers one chain may carry, direct or through an indirect table. */
export const MAX_CHAIN_LENGTH = MAX_QUEUE_SIZE;
/** Bytes of one descriptor, split or packed. */
export const DESC_SIZE = 16;

/** Outcome of walking a chain; anything but CHAIN_OK means the buffers cannot be used. */
export const CHAIN_OK = 0;
export const CHAIN_BAD_HEAD = 1;
export const CHAIN_BAD_NEXT = 2;
export const CHAIN_TOO_LONG = 3;
export const CHAIN_BAD_ADDRESS = 4;
export const CHAIN_BAD_INDIRECT = 5;
export const CHAIN_NESTED_INDIRECT = 6;

export const chainErrorNames = ['ok', 'head out of range', 'next out of range', 'chain too long (loop?)',
  'buffer outside guest memory', 'bad indirect table', 'nested or chained indirect descriptor'];

/** The buffers of one descriptor chain, in order. Reused for every request of a queue. */
export class Chain {
  head = 0;
  count = 0;
  /** Guest physical address of each buffer. */
  readonly addr = new Float64Array(MAX_CHAIN_LENGTH);
  readonly len = new Uint32Array(MAX_CHAIN_LENGTH);
  /** 1 where the buffer is device-writable. */
  readonly writable = new Uint8Array(MAX_CHAIN_LENGTH);
  readableBytes = 0;
  writableBytes = 0;
  /** A device-readable buffer came after a device-writable one (virtio 2.7.4.2 forbids it). */
  misordered = false;

  reset(head: number): void {
    this.head = head;
    this.count = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    this.misordered = false;
  }

  /** A migration logs dirty pages: mark the device-writable buffers (all of them: the device may have written any). */
  logWrites(log: DirtyLog): void {
    for (let i = 0; i < this.count; i++) if (this.writable[i] === 1) log.mark(this.addr[i], this.len[i]);
  }

  /**
   * Append one buffer the guest described (address as two u32 halves); returns
   * CHAIN_OK or why the chain cannot be used.
   */
  add(mem: GuestMemory, lo: number, hi: number, len: number, writable: boolean): number {
    if (hi >= 0x200000) return CHAIN_BAD_ADDRESS; // beyond 2^53: not a real guest address
    if (this.count >= MAX_CHAIN_LENGTH) return CHAIN_TOO_LONG;
    const addr = hi * 0x100000000 + lo;
    if (len > 0 && !mem.covers(addr, len)) return CHAIN_BAD_ADDRESS;
    const n = this.count++;
    this.addr[n] = addr;
    this.len[n] = len;
    if (writable) {
      this.writable[n] = 1;
      this.writableBytes += len;
    } else {
      this.writable[n] = 0;
      this.readableBytes += len;
      if (this.writableBytes > 0) this.misordered = true;
    }
    return CHAIN_OK;
  }
}

/**
 * Check an indirect table the guest points at and make `mem.view`/`mem.offset`
 * address it; returns its descriptor count, or -1 when it is unusable.
 */
export function mapIndirectTable(mem: GuestMemory, lo: number, hi: number, len: number): number {
  if (hi >= 0x200000) return -1;
  if (len === 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > MAX_CHAIN_LENGTH) return -1;
  return mem.access(hi * 0x100000000 + lo, len) ? len / DESC_SIZE : -1;
}
