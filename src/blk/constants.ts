// virtio-blk constants (virtio 1.2 §5.2).

export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;
export const VIRTIO_BLK_F_LIFETIME = 15;

export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;

/** Flag bit 0 of a discard / write-zeroes segment; the other 31 bits are reserved. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags. */
export const DWZ_SEGMENT_SIZE = 16;

export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Sectors are 512 bytes whatever the logical block size (virtio 5.2.6). */
export const SECTOR_SIZE = 512;
export const REQUEST_HEADER_SIZE = 16;
export const ID_BYTES = 20;
/** struct virtio_blk_lifetime: le16 pre_eol_info, le16 device_lifetime_est_typ_a, le16 device_lifetime_est_typ_b. */
export const LIFETIME_BYTES = 6;
/** pre_eol_info: reserved blocks consumed (as eMMC's PRE_EOL_INFO). */
export const PRE_EOL_INFO = { undefined: 0, normal: 1, warning: 2, urgent: 3 } as const;
/** device_lifetime_est_typ_a/b: 1 = 0-10 % of the estimated lifetime used, ..., 10 = 90-100 %, 11 = exceeded. */
export const LIFETIME_EST_MAX = 11;

/** Byte offsets in struct virtio_blk_config. */
export const CFG = {
  capacity: 0,
  sizeMax: 8,
  segMax: 12,
  geometry: 16,
  blkSize: 20,
  physicalBlockExp: 24,
  alignmentOffset: 25,
  minIoSize: 26,
  optIoSize: 28,
  writeback: 32,
  numQueues: 34,
  maxDiscardSectors: 36,
  maxDiscardSeg: 40,
  discardSectorAlignment: 44,
  maxWriteZeroesSectors: 48,
  maxWriteZeroesSeg: 52,
  writeZeroesMayUnmap: 56,
  /** Size of the config structure we serve (through write_zeroes_may_unmap and padding). */
  size: 60,
} as const;
