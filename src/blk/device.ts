// A virtio-blk device as the control plane sees it: features and config space
// for one disk. Requests are handled on iothreads (blk/request.ts). Transport-
// independent: the vhost-user back-end drives it through these methods.
import { blkFeatures, encodeBlkConfig, writeBlkConfig } from './config';
import { BlkCacheState, BlkDisk } from './disk';

export interface BlkDeviceOptions {
  disk: BlkDisk;
  maxQueues: number;
  /** Write cache mode the device starts in (and returns to on reset). */
  writeback: boolean;
}

export class BlkDevice {
  readonly maxQueues: number;
  readonly cache: BlkCacheState;
  readonly disk: BlkDisk;

  constructor(private readonly o: BlkDeviceOptions) {
    this.disk = o.disk;
    this.maxQueues = o.maxQueues;
    this.cache = { writeback: o.writeback };
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

  state(): BlkCacheState {
    return { writeback: this.cache.writeback };
  }
}
