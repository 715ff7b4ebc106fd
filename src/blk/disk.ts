// What virtio-blk needs to know about the backing store: geometry and policy.
// Filled by storage/ (files, block devices); blk/ never opens anything itself.

export interface BlkDisk {
  /** Open file descriptor of the image or block device. */
  readonly fd: number;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** Block size the guest sees (512 or 4096); requests must be aligned to it. */
  readonly logicalBlockSize: number;
  readonly physicalBlockSize: number;
  /** Answer to VIRTIO_BLK_T_GET_ID, at most 20 bytes. */
  readonly serial: string;
}

/** Device policy that the guest may change at runtime (config-wce). */
export interface BlkCacheState {
  /** true: volatile write cache (FLUSH makes data durable); false: write-through. */
  writeback: boolean;
}
