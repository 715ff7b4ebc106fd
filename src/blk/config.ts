// virtio-blk feature bits and config space for a disk.
import {
  CFG, SECTOR_SIZE, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_LIFETIME, VIRTIO_BLK_F_WRITE_ZEROES,
} from './constants';
import { BlkCacheState, BlkDisk } from './disk';

/**
 * Data buffers per request we promise to handle; the header and status take two
 * more descriptors, so a 128-entry queue still fits a maximal request (as QEMU does).
 */
export const SEG_MAX = 126;
/** Largest single data buffer. Linux merges pages up to this into one segment. */
export const SIZE_MAX = 4 << 20;
/**
 * Segments one DISCARD or WRITE_ZEROES request may carry (max_discard_seg,
 * max_write_zeroes_seg). Validated segments are copied into per-head typed arrays
 * (so a guest rewriting them mid-request cannot widen what we touch), which costs
 * queue size × this × 17 bytes; 16 lets Linux merge fstrim's discards (it sends
 * up to min(this, 256) ranges per request) at ≤ 272 KiB for a 1024-entry queue.
 * Linux always sends write zeroes as one segment.
 */
export const DWZ_SEG_MAX = 16;
const U32_MAX = 0xffffffff;

const bit = (n: number): bigint => 1n << BigInt(n);

/** DISCARD is offered (and accepted) only where the store can do it and the export is writable. */
export function offersDiscard(disk: BlkDisk): boolean {
  return disk.discard && !disk.readOnly;
}

export function offersWriteZeroes(disk: BlkDisk): boolean {
  return disk.writeZeroes && !disk.readOnly;
}

/**
 * Largest num_sectors of one discard / write-zeroes segment: the field is a u32, and
 * nothing larger than the disk makes sense; rounded down to whole logical blocks so
 * a guest splitting at this size stays aligned. Never 0 (Linux reads 0 as "no limit").
 */
export function maxRangeSectors(disk: BlkDisk): number {
  const lbsSectors = disk.logicalBlockSize / SECTOR_SIZE;
  const limit = Math.min(U32_MAX, Math.floor(disk.sizeBytes / SECTOR_SIZE));
  return Math.max(lbsSectors, limit - (limit % lbsSectors));
}

export function blkFeatures(disk: BlkDisk, numQueues: number): bigint {
  let f = bit(VIRTIO_BLK_F_SIZE_MAX) | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) |
    bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_TOPOLOGY) | bit(VIRTIO_BLK_F_CONFIG_WCE);
  if (numQueues > 1) f |= bit(VIRTIO_BLK_F_MQ);
  if (disk.readOnly) f |= bit(VIRTIO_BLK_F_RO);
  if (offersDiscard(disk)) f |= bit(VIRTIO_BLK_F_DISCARD);
  if (offersWriteZeroes(disk)) f |= bit(VIRTIO_BLK_F_WRITE_ZEROES);
  if (disk.lifetime !== undefined) f |= bit(VIRTIO_BLK_F_LIFETIME);
  return f;
}

export function encodeBlkConfig(disk: BlkDisk, cache: BlkCacheState, numQueues: number): Uint8Array {
  const bytes = new Uint8Array(CFG.size);
  const v = new DataView(bytes.buffer);
  const lbs = disk.logicalBlockSize;
  const sectors = Math.floor(disk.sizeBytes / SECTOR_SIZE);
  v.setUint32(CFG.capacity, sectors % 0x100000000, true);
  v.setUint32(CFG.capacity + 4, Math.floor(sectors / 0x100000000), true);
  v.setUint32(CFG.sizeMax, SIZE_MAX, true);
  v.setUint32(CFG.segMax, SEG_MAX, true);
  v.setUint32(CFG.blkSize, lbs, true);
  v.setUint8(CFG.physicalBlockExp, Math.max(0, Math.round(Math.log2(Math.max(disk.physicalBlockSize, lbs) / lbs))));
  v.setUint8(CFG.alignmentOffset, 0);
  // Topology sizes are in logical blocks (Linux multiplies them by blk_size).
  v.setUint16(CFG.minIoSize, Math.min(0xffff, Math.max(1, Math.floor(disk.minIoSize / lbs))), true);
  v.setUint32(CFG.optIoSize, Math.min(U32_MAX, Math.floor(disk.optIoSize / lbs)), true);
  v.setUint8(CFG.writeback, cache.writeback ? 1 : 0);
  v.setUint16(CFG.numQueues, numQueues, true);
  // Discard and write-zeroes limits are in 512-byte sectors and only meaningful with
  // their feature; left 0 otherwise.
  if (offersDiscard(disk)) {
    v.setUint32(CFG.maxDiscardSectors, maxRangeSectors(disk), true);
    v.setUint32(CFG.maxDiscardSeg, DWZ_SEG_MAX, true);
    // Linux takes this as the discard granularity.
    v.setUint32(CFG.discardSectorAlignment, lbs / SECTOR_SIZE, true);
  }
  if (offersWriteZeroes(disk)) {
    v.setUint32(CFG.maxWriteZeroesSectors, maxRangeSectors(disk), true);
    v.setUint32(CFG.maxWriteZeroesSeg, DWZ_SEG_MAX, true);
    // Files punch a hole when the guest allows unmapping; BLKZEROOUT never deallocates,
    // and the spec asks for 0 exactly when a write zeroes cannot deallocate.
    v.setUint8(CFG.writeZeroesMayUnmap, disk.kind === 'file' ? 1 : 0);
  }
  return bytes;
}

/**
 * Apply a guest write to config space. Only `writeback` is writable (config-wce);
 * returns false for anything else so the front-end hears about it.
 */
export function writeBlkConfig(cache: BlkCacheState, offset: number, data: Uint8Array): boolean {
  if (offset === CFG.writeback && data.length === 1 && data[0] <= 1) {
    cache.writeback = data[0] === 1;
    return true;
  }
  return false;
}
