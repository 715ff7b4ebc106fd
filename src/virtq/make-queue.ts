// The one place that knows both ring layouts: build the queue the driver
// negotiated (VIRTIO_F_RING_PACKED or not) and size its in-flight region.
import { GuestMemory } from '../memory/guest-memory';
import { inflightQueueBytes } from './inflight';
import { PackedQueue, checkPackedRingLayout } from './packed';
import { packedInflightQueueBytes } from './packed-inflight';
import { SplitQueue, SplitRingLayout, checkRingLayout } from './split';
import { Virtqueue } from './virtqueue';

export interface QueueFeatures {
  eventIdx: boolean;
  indirect: boolean;
  packed: boolean;
}

/** Why a ring with this layout cannot run; undefined when it can. */
export function checkQueueLayout(mem: GuestMemory, layout: SplitRingLayout, packed: boolean): string | undefined {
  return packed ? checkPackedRingLayout(mem, layout) : checkRingLayout(mem, layout);
}

/** A queue over the ring at `layout`, resuming at vring base `base`; throws RangeError when it cannot. */
export function makeQueue(mem: GuestMemory, layout: SplitRingLayout, base: number, f: QueueFeatures): Virtqueue {
  return f.packed ? new PackedQueue(mem, layout, base, f) : new SplitQueue(mem, layout, base, f);
}

/** Bytes of one queue's in-flight region in the layout of the ring type. */
export function inflightBytesFor(packed: boolean, queueSize: number): number {
  return packed ? packedInflightQueueBytes(queueSize) : inflightQueueBytes(queueSize);
}

/** Bytes of the whole in-flight region: the queue regions back to back. */
export function inflightRegionBytes(packed: boolean, numQueues: number, queueSize: number): number {
  return numQueues * inflightBytesFor(packed, queueSize);
}
