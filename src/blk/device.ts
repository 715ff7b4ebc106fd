// A virtio-blk device as the control plane sees it: features and config space
// for one disk. Requests are handled on iothreads (blk/request.ts). Transport-
// independent: the vhost-user back-end drives it through these methods.
import { VIRTIO_BLK_F_FLUSH } from './constants';
import { blkFeatures, encodeBlkConfig, writeBlkConfig } from './config';
import { BlkCacheState, BlkDisk } from './disk';

/** What the iothreads must follow at runtime: the cache mode and the size. */
export interface BlkDeviceState {
  writeback: boolean;
  sizeBytes: number;
}

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

  /**
   * virtio 1.2 §5.2.5: without CONFIG_WCE the cache is write-back exactly when
   * FLUSH was negotiated, and with CONFIG_WCE but no FLUSH it starts write-through.
   * A driver that cannot flush must never be left with a volatile cache.
   */
  negotiated(features: bigint): void {
    const flush = (features & (1n << BigInt(VIRTIO_BLK_F_FLUSH))) !== 0n;
    this.cache.writeback = this.o.writeback && flush;
  }

  /** New capacity after the image was resized; the caller pushes state() to the iothreads and tells the driver. */
  resize(sizeBytes: number): void {
    this.disk.sizeBytes = sizeBytes;
  }

  state(): BlkDeviceState {
    return { writeback: this.cache.writeback, sizeBytes: this.disk.sizeBytes };
  }
}
