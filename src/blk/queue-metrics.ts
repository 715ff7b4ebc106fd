// Per-queue counters of a virtio-blk device, kept by the iothread that owns
// the queue in a Float64Array over shared memory, and read by the control
// plane (Prometheus metrics, `vublk stats`) without asking the iothread.
// One writer per queue; readers may see a value a request old, never torn
// (aligned 8-byte stores).
import { ERRNO_MAX, errnoName } from '../util/errno';
import { VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES } from './constants';

/** Request kinds counted separately; OTHER: unknown types and malformed chains. */
export const KIND_NAMES = ['read', 'write', 'flush', 'discard', 'write_zeroes', 'get_id', 'other'] as const;
export const KIND_OTHER = 6;

/** Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf. */
export const LATENCY_BOUNDS = [10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1] as const;

// Field offsets within one queue's slice.
export const M_REQUESTS = 0; // + kind
export const M_BYTES_READ = 7;
export const M_BYTES_WRITTEN = 8;
export const M_IOERR = 9;
export const M_UNSUPP = 10;
export const M_IN_FLIGHT = 11;
export const M_LATENCY_SUM = 12;
export const M_LATENCY_BUCKETS = 13; // LATENCY_BOUNDS.length + 1 buckets (not cumulative)
/**
 * Requests the backing store failed, by cause (a subset of M_IOERR, which also
 * counts requests refused before any I/O): slot 0 short transfers, slot n errno n,
 * the last slot errnos beyond ERRNO_MAX. Indexed by errno so counting needs no lookup.
 */
export const M_STORAGE_ERRORS = M_LATENCY_BUCKETS + LATENCY_BOUNDS.length + 1;
export const STORAGE_ERROR_SLOTS = ERRNO_MAX + 2;
export const QUEUE_METRICS_FIELDS = M_STORAGE_ERRORS + STORAGE_ERROR_SLOTS;

/** Slot of a storage failure: its errno, or 0 for a short transfer (errno 0). */
export function storageErrorSlot(errno: number): number {
  return errno >= 0 && errno <= ERRNO_MAX ? errno : ERRNO_MAX + 1;
}

/** Label of a storage error slot: "short", an errno name ("ENOSPC"), or "other". */
export function storageErrorName(slot: number): string {
  return slot === 0 ? 'short' : slot <= ERRNO_MAX ? errnoName(slot) : 'other';
}

/** The kind index of a virtio-blk request type. */
export function kindOf(type: number): number {
  switch (type) {
    case VIRTIO_BLK_T_IN: return 0;
    case VIRTIO_BLK_T_OUT: return 1;
    case VIRTIO_BLK_T_FLUSH: return 2;
    case VIRTIO_BLK_T_DISCARD: return 3;
    case VIRTIO_BLK_T_WRITE_ZEROES: return 4;
    case VIRTIO_BLK_T_GET_ID: return 5;
    default: return KIND_OTHER;
  }
}

/** Shared memory for `queues` queues' counters. */
export function allocQueueMetrics(queues: number): SharedArrayBuffer {
  return new SharedArrayBuffer(queues * QUEUE_METRICS_FIELDS * Float64Array.BYTES_PER_ELEMENT);
}

/** Queue `index`'s slice. */
export function queueMetrics(buffer: SharedArrayBuffer, index: number): Float64Array {
  return new Float64Array(buffer, index * QUEUE_METRICS_FIELDS * Float64Array.BYTES_PER_ELEMENT, QUEUE_METRICS_FIELDS);
}

/** Histogram bucket of a latency in seconds. */
export function latencyBucket(seconds: number): number {
  let b = 0;
  while (b < LATENCY_BOUNDS.length && seconds > LATENCY_BOUNDS[b]) b++;
  return b;
}
