// Storage targets: the regular file or block device behind an export, opened with
// the flags the export needs and described as a BlkDisk for virtio-blk.
//
// Block devices are opened O_EXCL, so two exports of one device (or an export of a
// mounted device) fail with EBUSY instead of corrupting each other. Geometry comes
// from the device's ioctls (native blockDeviceInfo) and its sysfs queue directory;
// files take the direct-I/O alignment of the filesystem (statx STATX_DIOALIGN, else
// the logical block size of the device holding them).
import * as fs from 'node:fs';
import { BlkDisk, BlkLifetime } from '../blk/disk';
import { native } from '../native/addon';

export interface OpenTargetOptions {
  readOnly: boolean;
  /** Open with O_DIRECT (bypass the host page cache). */
  direct: boolean;
  /**
   * Block size the guest sees: a power of two in [512, 65536]. Default: the device's own
   * for block devices, 512 for files (or the filesystem's direct-I/O alignment when larger
   * and `direct`). Smaller than what the device needs is an error.
   */
  logicalBlockSize?: number;
  /** Answer to GET_ID, at most 20 bytes. */
  serial: string;
}

/** What the target reported beyond the BlkDisk: limits for the config space, diagnostics. */
export interface TargetDetails {
  /** "MAJOR:MINOR" of the block device, or of the device holding the file. */
  readonly device: string;
  /** sysfs queue directory of that device, when there is one (not for tmpfs, btrfs, overlay...). */
  readonly sysfsQueue?: string;
  /** Files: filesystem type, e.g. 'ext4', 'tmpfs' (a hex magic number when unknown). */
  readonly fsType?: string;
  /** Unit the device itself needs offsets and lengths aligned to (its logical block size). */
  readonly deviceLogicalBlockSize: number;
  /** Block devices: rotational hint, alignment offset and the queue's discard/zeroes limits (bytes; 0 = none). */
  readonly rotational?: boolean;
  readonly alignmentOffset?: number;
  readonly discardGranularity?: number;
  readonly discardMaxBytes?: number;
  readonly writeZeroesMaxBytes?: number;
  /** Size of the file or device in bytes when opened (or last resized), before rounding to a block size. */
  sizeBytes: number;
}

export interface StorageTarget {
  readonly disk: BlkDisk;
  readonly path: string;
  readonly details: TargetDetails;
  /** Close the fd (and with it a block device's exclusive claim). Idempotent. */
  close(): void;
}

/** Opening a target failed; `code` is the errno name ('EBUSY', 'ENOENT', ...) or 'EINVAL'. */
export class TargetError extends Error {
  constructor(message: string, readonly code: string) {
    super(message);
    this.name = 'TargetError';
  }
}

const { O_RDONLY, O_RDWR, O_EXCL, O_DIRECT } = fs.constants;
const MIN_BLOCK_SIZE = 512;
const MAX_BLOCK_SIZE = 65536;
const MAX_SERIAL_BYTES = 20;

/** Open `path` (a regular file or a block device) as an export's backing store. */
export function openTarget(path: string, o: OpenTargetOptions): StorageTarget {
  checkGeometry(o);
  let st: fs.BigIntStats;
  try {
    st = fs.statSync(path, { bigint: true });
  } catch (e) {
    throw errnoError(path, e);
  }
  // Checked before opening: open() of a FIFO would block, of a directory fail obscurely.
  if (st.isBlockDevice()) return openBlockDevice(path, o, st);
  if (st.isFile()) return openFile(path, o, st);
  throw new TargetError(`${path}: not a regular file or block device (${fileKind(st)})`, 'EINVAL');
}

function openFile(path: string, o: OpenTargetOptions, st: fs.BigIntStats): StorageTarget {
  const fd = openChecked(path, o.readOnly ? O_RDONLY : O_RDWR, o, st);
  try {
    const fst = fs.fstatSync(fd, { bigint: true });
    const [major, minor] = devNumbers(fst.dev);
    const queue = sysfsQueueDir(major, minor);
    // statx knows what this filesystem needs for O_DIRECT; the device's queue is the fallback.
    const dio = native.directIoAlignment(fd);
    let offsetAlign: number;
    let memoryAlign: number;
    if (dio !== null && dio.offsetAlignment > 0) {
      offsetAlign = dio.offsetAlignment;
      memoryAlign = dio.memoryAlignment;
    } else {
      offsetAlign = (queue !== undefined ? readSysfsNumber(queue, 'logical_block_size') : undefined) ?? MIN_BLOCK_SIZE;
      memoryAlign = (queue !== undefined ? dmaAlignment(queue) : undefined) ?? offsetAlign;
    }
    const lbs = o.direct ? Math.max(MIN_BLOCK_SIZE, offsetAlign) : MIN_BLOCK_SIZE;
    const devicePhysical = queue !== undefined ? readSysfsNumber(queue, 'physical_block_size') : undefined;
    const fsType = fsTypeName(path);
    const disk: BlkDisk = {
      fd,
      kind: 'file',
      sizeBytes: roundDown(Number(fst.size), lbs),
      readOnly: o.readOnly,
      logicalBlockSize: lbs,
      physicalBlockSize: Math.max(lbs, devicePhysical ?? 0),
      minIoSize: 0,
      optIoSize: 0,
      direct: o.direct,
      directAlignment: Math.max(offsetAlign, memoryAlign, 1),
      // fallocate punch-hole / zero-range; the engine reports EOPNOTSUPP per request on
      // the rare filesystem without them.
      discard: !o.readOnly,
      writeZeroes: !o.readOnly,
      memoryBacked: MEMORY_FILESYSTEMS.has(fsType),
      serial: o.serial,
    };
    const details: TargetDetails = {
      device: `${major}:${minor}`,
      sysfsQueue: queue,
      fsType,
      deviceLogicalBlockSize: offsetAlign,
      sizeBytes: Number(fst.size),
    };
    return withGeometry(makeTarget(path, fd, disk, details), o);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

function openBlockDevice(path: string, o: OpenTargetOptions, st: fs.BigIntStats): StorageTarget {
  // O_EXCL on a block device (Linux) claims it exclusively: EBUSY if mounted, used by
  // device-mapper/md, or opened O_EXCL by anyone else, including another export.
  const fd = openChecked(path, (o.readOnly ? O_RDONLY : O_RDWR) | O_EXCL, o, st);
  try {
    const info = native.blockDeviceInfo(fd);
    // Older kernels refuse the read-write open (EACCES, handled in openChecked); newer
    // ones allow it and fail every write with EPERM.
    if (info.readOnly && !o.readOnly) throw readOnlyDevice(path);
    const queue = sysfsQueueDir(info.major, info.minor);
    const deviceLbs = info.logicalBlockSize;
    const lbs = deviceLbs;
    let memoryAlign = queue !== undefined ? dmaAlignment(queue) : undefined;
    if (memoryAlign === undefined) memoryAlign = native.directIoAlignment(fd)?.memoryAlignment || deviceLbs;
    const discardMaxBytes = queue !== undefined ? readSysfsNumber(queue, 'discard_max_bytes') : undefined;
    const disk: BlkDisk = {
      fd,
      kind: 'block',
      sizeBytes: roundDown(info.sizeBytes, lbs),
      readOnly: o.readOnly,
      logicalBlockSize: lbs,
      physicalBlockSize: Math.max(info.physicalBlockSize, lbs),
      minIoSize: info.minIoSize,
      optIoSize: info.optIoSize,
      direct: o.direct,
      directAlignment: Math.max(deviceLbs, memoryAlign),
      discard: !o.readOnly && (discardMaxBytes ?? 0) > 0,
      // BLKZEROOUT falls back to writing zero pages where the device has no WRITE ZEROES.
      writeZeroes: !o.readOnly,
      serial: o.serial,
    };
    const details: TargetDetails = {
      device: `${info.major}:${info.minor}`,
      sysfsQueue: queue,
      deviceLogicalBlockSize: deviceLbs,
      rotational: info.rotational,
      alignmentOffset: info.alignmentOffset,
      discardGranularity: queue !== undefined ? readSysfsNumber(queue, 'discard_granularity') : undefined,
      discardMaxBytes,
      writeZeroesMaxBytes: queue !== undefined ? readSysfsNumber(queue, 'write_zeroes_max_bytes') : undefined,
      sizeBytes: info.sizeBytes,
    };
    return withGeometry(makeTarget(path, fd, disk, details), o);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

export interface DiskGeometry {
  /** Block size the guest sees; default as for OpenTargetOptions.logicalBlockSize. */
  logicalBlockSize?: number;
  serial: string;
  /** Read-only for this user even when the target was opened read-write. */
  readOnly?: boolean;
  /** Offer discard (when the target can); false answers the policy discard=ignore. */
  discard?: boolean;
  /** Answer GET_LIFETIME with these figures (and offer VIRTIO_BLK_F_LIFETIME). */
  lifetime?: BlkLifetime;
}

function checkGeometry(g: DiskGeometry): void {
  if (Buffer.byteLength(g.serial, 'utf8') > MAX_SERIAL_BYTES) {
    throw new RangeError(`serial must be at most ${MAX_SERIAL_BYTES} bytes, got '${g.serial}'`);
  }
  const lbs = g.logicalBlockSize;
  if (lbs !== undefined && !(Number.isInteger(lbs) && lbs >= MIN_BLOCK_SIZE && lbs <= MAX_BLOCK_SIZE && (lbs & (lbs - 1)) === 0)) {
    throw new RangeError(`logical block size must be a power of two in [${MIN_BLOCK_SIZE}, ${MAX_BLOCK_SIZE}], got ${lbs}`);
  }
}

/**
 * The BlkDisk one export of an open target sees: its block size (which decides
 * the rounded size), serial and permissions. Block nodes are opened once and
 * may be exported with different geometry, so this is separate from opening.
 */
export function exportDisk(target: StorageTarget, g: DiskGeometry): BlkDisk {
  checkGeometry(g);
  const base = target.disk;
  const deviceLbs = target.details.deviceLogicalBlockSize;
  let lbs = g.logicalBlockSize;
  if (lbs === undefined) {
    lbs = base.logicalBlockSize;
  } else if (base.kind === 'block' && lbs < deviceLbs) {
    throw new TargetError(`${target.path}: logical block size ${lbs} is smaller than the device's own (${deviceLbs})`, 'EINVAL');
  } else if (base.kind === 'file' && base.direct && lbs < deviceLbs) {
    throw new TargetError(`${target.path}: logical block size ${lbs} is smaller than the ${deviceLbs}-byte alignment O_DIRECT needs on this filesystem`, 'EINVAL');
  }
  const readOnly = base.readOnly || g.readOnly === true;
  return {
    ...base,
    sizeBytes: roundDown(target.details.sizeBytes, lbs),
    readOnly,
    logicalBlockSize: lbs,
    physicalBlockSize: Math.max(base.physicalBlockSize, lbs),
    discard: base.discard && !readOnly && g.discard !== false,
    writeZeroes: base.writeZeroes && !readOnly,
    serial: g.serial,
    ...(g.lifetime !== undefined ? { lifetime: g.lifetime } : {}),
  };
}

function withGeometry(target: StorageTarget, g: DiskGeometry): StorageTarget {
  return { ...target, disk: exportDisk(target, g) };
}

/**
 * Change the size of a target (QMP block_resize). Files are truncated or
 * extended (sparse); a block device cannot change size from here, but may
 * have grown underneath (lvextend), so any size up to its current one is taken.
 */
export function resizeTarget(target: StorageTarget, sizeBytes: number): void {
  const fd = target.disk.fd;
  if (target.disk.kind === 'file') {
    fs.ftruncateSync(fd, sizeBytes);
  } else {
    const actual = native.blockDeviceInfo(fd).sizeBytes;
    if (sizeBytes > actual) throw new TargetError(`${target.path}: cannot grow a block device beyond its size (${actual} bytes)`, 'EINVAL');
  }
  target.details.sizeBytes = sizeBytes;
}

function makeTarget(path: string, fd: number, disk: BlkDisk, details: TargetDetails): StorageTarget {
  let closed = false;
  return {
    disk, path, details,
    close: () => {
      if (closed) return;
      closed = true;
      fs.closeSync(fd);
    },
  };
}

/**
 * open() with the target's flags, turning the failures a user can act on into clear
 * messages, and checking that what was opened is what stat() saw.
 */
function openChecked(path: string, flags: number, o: OpenTargetOptions, st: fs.BigIntStats): number {
  const block = st.isBlockDevice();
  let fd: number;
  try {
    fd = fs.openSync(path, flags | (o.direct ? O_DIRECT : 0));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (o.direct && code === 'EINVAL' && opensWithoutDirect(path, flags)) {
      throw new TargetError(`${path}: the filesystem (${fsTypeName(path)}) does not support O_DIRECT; serve this image with --cache writeback instead`, 'EINVAL');
    }
    if (block && code === 'EBUSY') {
      throw new TargetError(`${path}: block device is busy (EBUSY): another export, a mount, or device-mapper/md holds it exclusively`, 'EBUSY');
    }
    if (block && !o.readOnly && (code === 'EACCES' || code === 'EROFS') && blockDeviceIsReadOnly(path)) {
      throw readOnlyDevice(path);
    }
    throw errnoError(path, e);
  }
  try {
    const fst = fs.fstatSync(fd, { bigint: true });
    const same = block ? fst.isBlockDevice() && fst.rdev === st.rdev : fst.isFile() && fst.dev === st.dev && fst.ino === st.ino;
    if (!same) throw new TargetError(`${path}: replaced while it was being opened`, 'EAGAIN');
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  return fd;
}

function readOnlyDevice(path: string): TargetError {
  return new TargetError(`${path}: block device is read-only; export it with --readonly`, 'EROFS');
}

/** After open(O_DIRECT) failed with EINVAL: does the same open without O_DIRECT work? */
function opensWithoutDirect(path: string, flags: number): boolean {
  try {
    fs.closeSync(fs.openSync(path, flags));
    return true;
  } catch {
    return false;
  }
}

function blockDeviceIsReadOnly(path: string): boolean {
  try {
    const fd = fs.openSync(path, O_RDONLY);
    try {
      return native.blockDeviceInfo(fd).readOnly;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
}

/** "<path>: permission denied (EACCES)" from a Node fs error. */
function errnoError(path: string, e: unknown): Error {
  const err = e as NodeJS.ErrnoException;
  if (typeof err?.code !== 'string') return e as Error;
  // Node's text is "EACCES: permission denied, open '/x'": keep the description.
  const desc = /^[A-Z0-9_]+: (.*?), \w+ '/.exec(err.message)?.[1] ?? err.message;
  return new TargetError(`${path}: ${desc} (${err.code})`, err.code);
}

function roundDown(n: number, unit: number): number {
  return n - (n % unit);
}

function fileKind(st: fs.BigIntStats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'unsupported file type';
}

/** MAJOR and MINOR of a dev_t, with glibc's encoding (gnu_dev_major/gnu_dev_minor). */
export function devNumbers(dev: bigint): [number, number] {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & 0xfffff000n);
  const minor = (dev & 0xffn) | ((dev >> 12n) & 0xffffff00n);
  return [Number(major), Number(minor)];
}

/**
 * The sysfs queue directory of a block device: /sys/dev/block/MAJ:MIN/queue, or its
 * parent disk's for a partition. undefined when the device has none (tmpfs, btrfs and
 * overlayfs files live on anonymous 0:N devices).
 */
export function sysfsQueueDir(major: number, minor: number): string | undefined {
  const base = `/sys/dev/block/${major}:${minor}`;
  // Kept as strings: the kernel must resolve "..", after following the symlink.
  const candidates = [`${base}/queue`];
  if (fs.existsSync(`${base}/partition`)) candidates.push(`${base}/../queue`);
  return candidates.find((dir) => fs.existsSync(dir));
}

/** A numeric sysfs attribute, or undefined if absent or not a number. */
export function readSysfsNumber(dir: string, name: string): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`${dir}/${name}`, 'utf8').trim();
  } catch {
    return undefined;
  }
  if (!/^\d+$/.test(text)) return undefined;
  return Number(text);
}

/** Memory alignment for O_DIRECT from queue/dma_alignment, which holds the mask (511 = 512 bytes). */
function dmaAlignment(queue: string): number | undefined {
  const n = readSysfsNumber(queue, 'dma_alignment');
  if (n === undefined || n > 0xffffff) return undefined;
  return (n & (n + 1)) === 0 ? n + 1 : n;
}

const FS_MAGIC: Record<number, string> = {
  0xef53: 'ext4', 0x58465342: 'xfs', 0x9123683e: 'btrfs', 0x01021994: 'tmpfs', 0x858458f6: 'ramfs',
  0x794c7630: 'overlayfs', 0x6969: 'nfs', 0x65735546: 'fuse', 0x9fa0: 'proc', 0x62656572: 'sysfs',
  0x958458f6: 'hugetlbfs', 0xf2f52010: 'f2fs', 0x2fc12fc1: 'zfs', 0x4d44: 'vfat', 0x5346544e: 'ntfs',
  0x01021997: 'v9fs', 0xff534d42: 'cifs', 0x73717368: 'squashfs',
};

/** Filesystems whose files are memory: reading or writing them never waits for a device. */
const MEMORY_FILESYSTEMS: ReadonlySet<string> = new Set(['tmpfs', 'ramfs']);

/** Filesystem type holding `path`, for messages. */
export function fsTypeName(path: string): string {
  try {
    const type = fs.statfsSync(path).type;
    return FS_MAGIC[type] ?? `type 0x${type.toString(16)}`;
  } catch {
    return 'unknown filesystem';
  }
}

/** Create a sparse image of `sizeBytes` unless `path` exists already; returns true if it was created. */
export function createSparseImage(path: string, sizeBytes: number): boolean {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  try {
    fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}
