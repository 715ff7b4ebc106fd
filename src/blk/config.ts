// virtio-blk feature bits and config space for a disk.
import {
  CFG, SECTOR_SIZE, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY,
} from './constants';
import { BlkCacheState, BlkDisk } from './disk';

/**
 * Data buffers per request we promise to handle; the header and status take two
 * more descriptors, so a 128-entry queue still fits a maximal request (as QEMU does).
 */
export const SEG_MAX = 126;
/** Largest single data buffer. Linux merges pages up to this into one segment. */
export const SIZE_MAX = 4 << 20;

const bit = (n: number): bigint => 1n << BigInt(n);

export function blkFeatures(disk: BlkDisk, numQueues: number): bigint {
  let f = bit(VIRTIO_BLK_F_SIZE_MAX) | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) |
    bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_TOPOLOGY) | bit(VIRTIO_BLK_F_CONFIG_WCE);
  if (numQueues > 1) f |= bit(VIRTIO_BLK_F_MQ);
  if (disk.readOnly) f |= bit(VIRTIO_BLK_F_RO);
  return f;
}

export function encodeBlkConfig(disk: BlkDisk, cache: BlkCacheState, numQueues: number): Uint8Array {
  const bytes = new Uint8Array(CFG.size);
  const v = new DataView(bytes.buffer);
  const sectors = Math.floor(disk.sizeBytes / SECTOR_SIZE);
  v.setUint32(CFG.capacity, sectors % 0x100000000, true);
  v.setUint32(CFG.capacity + 4, Math.floor(sectors / 0x100000000), true);
  v.setUint32(CFG.sizeMax, SIZE_MAX, true);
  v.setUint32(CFG.segMax, SEG_MAX, true);
  v.setUint32(CFG.blkSize, disk.logicalBlockSize, true);
  v.setUint8(CFG.physicalBlockExp, Math.max(0, Math.log2(disk.physicalBlockSize / disk.logicalBlockSize)));
  v.setUint8(CFG.alignmentOffset, 0);
  v.setUint16(CFG.minIoSize, 1, true);
  v.setUint32(CFG.optIoSize, 0, true);
  v.setUint8(CFG.writeback, cache.writeback ? 1 : 0);
  v.setUint16(CFG.numQueues, numQueues, true);
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
