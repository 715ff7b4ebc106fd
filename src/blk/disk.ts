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
  /** Answer to VIRTIO_BLK_T_GET_LIFETIME; when set, VIRTIO_BLK_F_LIFETIME is offered. */
  readonly lifetime?: BlkLifetime;
}

/** Storage wear as the guest sees it (virtio 1.2 §5.2.6: struct virtio_blk_lifetime). */
export interface BlkLifetime {
  /** 0 undefined, 1 normal, 2 warning (80 % of reserved blocks consumed), 3 urgent (90 %). */
  readonly preEolInfo: number;
  /** Wear of SLC cells, of MLC cells: 0 undefined, 1..10 in 10 % steps of the lifetime used, 11 exceeded. */
  readonly estTypA: number;
  readonly estTypB: number;
}

/** Device policy that the guest may change at runtime (config-wce). */
export interface BlkCacheState {
  /** true: volatile write cache (FLUSH makes data durable); false: write-through. */
  writeback: boolean;
}
