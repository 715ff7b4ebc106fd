// What virtio-blk needs to know about the backing store: geometry and policy.
// Filled by storage/ (files, block devices); blk/ never opens anything itself.

export interface BlkDisk {
  /** Open file descriptor of the image or block device. */
  readonly fd: number;
  /** 'file': regular image file (fallocate for discard/zeroes); 'block': block device (BLKDISCARD/BLKZEROOUT). */
  readonly kind: 'file' | 'block';
  /** Changes when the export is resized (block_resize); everything else is fixed at open. */
  sizeBytes: number;
  readonly readOnly: boolean;
  /** Block size the guest sees (512 or 4096); requests must be aligned to it. */
  readonly logicalBlockSize: number;
  readonly physicalBlockSize: number;
  /** Minimum and optimal I/O sizes in bytes (0 = not reported). */
  readonly minIoSize: number;
  readonly optIoSize: number;
  /**
   * The fd was opened with O_DIRECT: buffers, offsets and lengths given to the
   * engine must be multiples of `directAlignment`; blk/ bounces the ones that are not.
   */
  readonly direct: boolean;
  readonly directAlignment: number;
  /** Whether the store can discard / write zeroes (and so whether the features are offered). */
  readonly discard: boolean;
  readonly writeZeroes: boolean;
  /**
   * The store is memory (a file in tmpfs or ramfs): I/O never waits for a device,
   * so it may run inline on the iothread (storage/inline.ts).
   */
  readonly memoryBacked?: boolean;
  /** Answer to VIRTIO_BLK_T_GET_ID, at most 20 bytes. */
  readonly serial: string;
}

/** Device policy that the guest may change at runtime (config-wce). */
export interface BlkCacheState {
  /** true: volatile write cache (FLUSH makes data durable); false: write-through. */
  writeback: boolean;
}
