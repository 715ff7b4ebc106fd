// A virtio-blk device: features, config space and per-queue request handlers
// for one disk. Transport-independent: the vhost-user back-end (or anything
// else) drives it through these methods.
import { QueueContext, QueueHandler } from '../dataplane/dataplane';
import { EngineFactory } from '../storage/engine';
import { blkFeatures, encodeBlkConfig, writeBlkConfig } from './config';
import { BlkCacheState, BlkDisk } from './disk';
import { createBlkQueueHandler } from './queue-handler';

export interface BlkDeviceOptions {
  disk: BlkDisk;
  maxQueues: number;
  /** Write cache mode the device starts in (and returns to on reset). */
  writeback: boolean;
  engines: EngineFactory;
}

export class BlkDevice {
  readonly maxQueues: number;
  readonly cache: BlkCacheState;
  readonly queueHandlers: (ctx: QueueContext) => QueueHandler;

  constructor(private readonly o: BlkDeviceOptions) {
    this.maxQueues = o.maxQueues;
    this.cache = { writeback: o.writeback };
    this.queueHandlers = (ctx) => createBlkQueueHandler(ctx, o.disk, this.cache, o.engines);
  }

  deviceFeatures(): bigint {
    return blkFeatures(this.o.disk, this.maxQueues);
  }

  readConfig(offset: number, size: number): Uint8Array {
    const config = encodeBlkConfig(this.o.disk, this.cache, this.maxQueues);
    const out = new Uint8Array(size);
    if (offset < config.length) out.set(config.subarray(offset, Math.min(config.length, offset + size)));
    return out;
  }

  writeConfig(offset: number, data: Uint8Array): boolean {
    return writeBlkConfig(this.cache, offset, data);
  }

  reset(): void {
    this.cache.writeback = this.o.writeback;
  }
}
