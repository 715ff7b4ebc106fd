// Glue: a virtio-blk request handler for one queue, on a lane of its
// iothread's shared storage engine.
import { GuestMemory } from '../memory/guest-memory';
import { EngineHub } from '../storage/engine-hub';
import { Logger } from '../util/log';
import { Virtqueue } from '../virtq/virtqueue';
import { BlkCacheState, BlkDisk } from './disk';
import { BlkQueue, BlkQueueStats } from './request';
import { SharedThrottle } from './throttle';

export interface BlkQueueContext {
  queue: Virtqueue;
  mem: GuestMemory;
  onCompleted: () => void;
  log: Logger;
}

export interface BlkQueueHandler {
  handle(head: number): void;
  endBatch(): void;
  /** The ring stops or the memory changes: requests waiting for the I/O limits start now. */
  releaseWaiting(): void;
  close(): void;
  readonly stats: BlkQueueStats;
}

export function createBlkQueueHandler(ctx: BlkQueueContext, disk: BlkDisk, cache: BlkCacheState, hub: EngineHub, metrics?: Float64Array,
                                      throttle?: SharedThrottle): BlkQueueHandler {
  // The lane's sink forwards to the queue, which needs the lane's first slot to exist.
  const sink = { blk: undefined as BlkQueue | undefined, ioComplete(head: number, result: number) { this.blk!.ioComplete(head, result); } };
  const slotBase = hub.attach(sink, ctx.queue.size);
  const blk = new BlkQueue({ queue: ctx.queue, mem: ctx.mem, disk, cache, engine: hub.engine, slotBase, onCompleted: ctx.onCompleted, log: ctx.log, metrics, throttle });
  sink.blk = blk;
  return {
    handle: (head) => blk.handle(head),
    endBatch: () => blk.endBatch(),
    releaseWaiting: () => blk.releaseWaiting(),
    // Only called with nothing in flight; the bounce area must outlive every request.
    close: () => { hub.detach(slotBase); blk.close(); },
    stats: blk.stats,
  };
}
