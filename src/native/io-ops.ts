// Operation codes of the addon's I/O engines (thread pool and io_uring). Kept
// apart from addon.ts so code that only needs the numbers does not load the
// native module.
export const IO_READ = 0;
export const IO_WRITE = 1;
/** fdatasync */
export const IO_FLUSH = 2;
// Range operations (offset, length; no buffers), chosen by the caller per target kind.
/** fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): discard on files; reads back zeroes. */
export const IO_PUNCH_HOLE = 3;
/** fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE): write zeroes on files. */
export const IO_ZERO_RANGE = 4;
/** ioctl(BLKDISCARD): discard on block devices. */
export const IO_BLKDISCARD = 5;
/** ioctl(BLKZEROOUT): write zeroes on block devices. */
export const IO_BLKZEROOUT = 6;

/** Names of the operations above, by code, for log records. */
export const IO_OP_NAMES = ['read', 'write', 'flush', 'punch_hole', 'zero_range', 'blkdiscard', 'blkzeroout'] as const;
