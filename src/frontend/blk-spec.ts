// virtio-blk as the driver sees it (virtio 1.2 §5.2): the request header and
// config space layout. The spec constants are shared with the device side.
export {
  VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_GEOMETRY, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_F_LIFETIME, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_GET_LIFETIME, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, SECTOR_SIZE, REQUEST_HEADER_SIZE as BLK_HEADER_SIZE, ID_BYTES as BLK_ID_BYTES,
  LIFETIME_BYTES as BLK_LIFETIME_BYTES,
} from '../blk/constants';
import { REQUEST_HEADER_SIZE as BLK_HEADER_SIZE } from '../blk/constants';

/** Device status bits (virtio 1.2 §2.1), sent with SET_STATUS. */
export const VIRTIO_CONFIG_S_ACKNOWLEDGE = 1;
export const VIRTIO_CONFIG_S_DRIVER = 2;
export const VIRTIO_CONFIG_S_DRIVER_OK = 4;
export const VIRTIO_CONFIG_S_FEATURES_OK = 8;

/** struct virtio_blk_config up to write_zeroes_may_unmap plus padding, as QEMU 7.2 reads it. */
export const BLK_CONFIG_SIZE = 60;

export interface BlkConfig {
  /** In 512-byte sectors. */
  capacity: number;
  sizeMax: number;
  segMax: number;
  geometry: { cylinders: number; heads: number; sectors: number };
  blkSize: number;
  physicalBlockExp: number;
  alignmentOffset: number;
  minIoSize: number;
  optIoSize: number;
  writeback: number;
  numQueues: number;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  discardSectorAlignment: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  writeZeroesMayUnmap: number;
}

export function decodeBlkConfig(bytes: Uint8Array): BlkConfig {
  if (bytes.length < BLK_CONFIG_SIZE) throw new RangeError(`virtio-blk config needs ${BLK_CONFIG_SIZE} bytes, got ${bytes.length}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    capacity: v.getUint32(4, true) * 0x1_0000_0000 + v.getUint32(0, true),
    sizeMax: v.getUint32(8, true),
    segMax: v.getUint32(12, true),
    geometry: { cylinders: v.getUint16(16, true), heads: v.getUint8(18), sectors: v.getUint8(19) },
    blkSize: v.getUint32(20, true),
    physicalBlockExp: v.getUint8(24),
    alignmentOffset: v.getUint8(25),
    minIoSize: v.getUint16(26, true),
    optIoSize: v.getUint32(28, true),
    writeback: v.getUint8(32),
    numQueues: v.getUint16(34, true),
    maxDiscardSectors: v.getUint32(36, true),
    maxDiscardSeg: v.getUint32(40, true),
    discardSectorAlignment: v.getUint32(44, true),
    maxWriteZeroesSectors: v.getUint32(48, true),
    maxWriteZeroesSeg: v.getUint32(52, true),
    writeZeroesMayUnmap: v.getUint8(56),
  };
}

/** The 16-byte request header: type, reserved, sector. */
export function encodeBlkHeader(type: number, sector: number): Uint8Array {
  const bytes = new Uint8Array(BLK_HEADER_SIZE);
  const v = new DataView(bytes.buffer);
  v.setUint32(0, type, true);
  v.setUint32(8, sector % 0x1_0000_0000, true);
  v.setUint32(12, Math.floor(sector / 0x1_0000_0000), true);
  return bytes;
}
