// Glue: a virtio-blk request handler plus its storage engine for one queue.
import { EngineFactory } from '../storage/engine';
import { Logger } from '../util/log';
import { SplitQueue } from '../virtq/split';
import { GuestMemory } from '../memory/guest-memory';
import { BlkQueue, BlkQueueStats } from './request';
import { BlkCacheState, BlkDisk } from './disk';

export interface BlkQueueContext {
  queue: SplitQueue;
  mem: GuestMemory;
  onCompleted: () => void;
  log: Logger;
}

export interface BlkQueueHandler {
  handle(head: number): void;
  endBatch(): void;
  close(): void;
  readonly stats: BlkQueueStats;
}

export function createBlkQueueHandler(ctx: BlkQueueContext, disk: BlkDisk, cache: BlkCacheState,
                                      makeEngine: EngineFactory): BlkQueueHandler {
  let blk: BlkQueue | undefined;
  // One engine slot per descriptor head: a head is never in flight twice.
  const engine = makeEngine(ctx.queue.size, (slot, result) => blk!.ioComplete(slot, result));
  blk = new BlkQueue({ queue: ctx.queue, mem: ctx.mem, disk, cache, engine, slotBase: 0, onCompleted: ctx.onCompleted, log: ctx.log });
  const q = blk;
  return {
    handle: (head) => q.handle(head),
    endBatch: () => q.endBatch(),
    close: () => engine.close(),
    stats: q.stats,
  };
}
