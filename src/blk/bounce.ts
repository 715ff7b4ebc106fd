// Memory for cache=none bounce buffers: page-aligned, with a host address the
// storage engine can be given, and a Uint8Array for copying to and from guest
// memory. One area per queue, allocated when the queue starts.
import * as fs from 'node:fs';
import type { NativeAddon } from '../native/addon';

export interface BounceArea {
  /** Host address of bytes[0]; page-aligned. */
  readonly hostAddr: number;
  readonly bytes: Uint8Array;
  /** Release the memory; bytes must not be touched afterwards. */
  free(): void;
}

/** Returns an area of at least `size` bytes (tests substitute plain ArrayBuffers with fake addresses). */
export type BounceAllocator = (size: number) => BounceArea;

/**
 * A shared mapping of a memfd. Pages cost nothing until touched, and the pool hands
 * out the most recently freed slot first, so a queue that rarely bounces keeps only
 * a slot or two resident.
 */
export function mapBounceArea(size: number): BounceArea {
  // Loaded here rather than at the top so that blk/ stays loadable without the addon
  // (unit tests, tools); only cache=none queues get here.
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { native } = require('../native/addon') as { native: NativeAddon };
  const fd = native.memfdCreate('vublk-bounce');
  let addr: number;
  try {
    fs.ftruncateSync(fd, size);
    addr = native.mmap(fd, size, 0, true);
  } finally {
    // The mapping keeps the memory; the fd is not needed any more.
    native.close(fd);
  }
  const buffer = native.arrayBuffer(addr, size);
  let freed = false;
  return {
    hostAddr: addr,
    bytes: new Uint8Array(buffer),
    free: () => {
      if (freed) return;
      freed = true;
      // Detach first: a stray access afterwards throws instead of touching unmapped memory.
      native.detach(buffer);
      native.munmap(addr, size);
    },
  };
}
