// I/O limits of one export, like QEMU's throttling (block_set_io_throttle) and
// SPDK's bdev QoS: operations per second and bytes per second, for reads and
// writes together and each alone, each with an optional burst. The export's
// queues run on several iothreads, so the limiter lives in a SharedArrayBuffer
// that every thread of the export shares, and the control plane changes the
// limits in place at runtime. Requests over a limit wait; they never fail.
//
// Each limit is a GCRA (virtual scheduling) bucket: a theoretical arrival time
// TAT advances by cost / rate per admitted request; a request is admitted while
// TAT - now <= tolerance, the burst the bucket allows. Without a burst limit the
// tolerance is a tenth of a second of the rate (QEMU's default bucket); with one
// it is max * max-length, and a second bucket at the max rate (a tenth of a
// second of tolerance) keeps the burst itself at that rate, as QEMU does. Over
// any long interval the average rate is held exactly.

/** The six buckets, in QEMU's order and names (block_set_io_throttle / throttling.*). */
import { performance } from 'node:perf_hooks';
export const BUCKETS = ['bps-total', 'bps-read', 'bps-write', 'iops-total', 'iops-read', 'iops-write'] as const;
export type BucketName = typeof BUCKETS[number];

export interface BucketLimit {
  /** Units (bytes or operations) per second; 0: no limit. */
  avg: number;
  /** Burst rate; 0: no burst beyond a tenth of a second of avg. */
  max: number;
  /** Seconds a burst at max may last (QEMU's *-max-length); default 1. */
  maxLength: number;
}

export type IoLimits = Record<BucketName, BucketLimit> & {
  /** Requests larger than this count as several operations (QEMU's iops-size); 0: each counts as one. */
  iopsSize: number;
};

export const NO_LIMIT: BucketLimit = { avg: 0, max: 0, maxLength: 1 };

export function noLimits(): IoLimits {
  const l = Object.fromEntries(BUCKETS.map((b) => [b, { ...NO_LIMIT }])) as Record<BucketName, BucketLimit>;
  return { ...l, iopsSize: 0 };
}

/** Why these limits cannot be used; undefined when they can (QEMU's throttle_is_valid rules). */
export function checkLimits(l: IoLimits): string | undefined {
  for (const b of BUCKETS) {
    const { avg, max, maxLength } = l[b];
    for (const [what, v] of [['', avg], ['-max', max], ['-max-length', maxLength]] as const) {
      if (!Number.isFinite(v) || v < 0 || v > 1e15) return `${b}${what} must be a number in 0..1e15`;
    }
    if (max > 0 && max < avg) return `${b}-max ${max} is below ${b} ${avg}`;
    if (max > 0 && avg === 0) return `${b}-max needs ${b}`;
    if (maxLength < 1) return `${b}-max-length must be at least 1`;
  }
  for (const kind of ['bps', 'iops'] as const) {
    if (l[`${kind}-total`].avg > 0 && (l[`${kind}-read`].avg > 0 || l[`${kind}-write`].avg > 0)) {
      return `${kind}-total cannot be combined with ${kind}-read or ${kind}-write`;
    }
  }
  if (!Number.isInteger(l.iopsSize) || l.iopsSize < 0) return 'iops-size must be a whole number of bytes';
  return undefined;
}

export const anyLimit = (l: IoLimits): boolean => BUCKETS.some((b) => l[b].avg > 0);

// Shared layout: Int32 [lock, active]; Float64 from byte 8: per bucket two limiters (the average, then the
// burst rate), each [rate per ms, tolerance ms, TAT ms]; then iops-size.
const I32_LOCK = 0;
const I32_ACTIVE = 1;
const F64_BASE = 1;
const F64_PER_LIMITER = 3;
const F64_PER_BUCKET = 2 * F64_PER_LIMITER;
const F64_IOPS_SIZE = F64_BASE + F64_PER_BUCKET * BUCKETS.length;
const BYTES = 8 * (F64_IOPS_SIZE + 1);
const BPS_TOTAL = 0;
const IOPS_TOTAL = 3;
/** Read / write bucket = total + 1 / total + 2. */
const READ = 1;
const WRITE = 2;

/**
 * This thread's offset from performance.now() to the process's monotonic clock (process.hrtime(),
 * CLOCK_MONOTONIC in every thread). Both count the same clock, so it is taken once per thread.
 */
const monotonicOffsetMs = ((): number => {
  performance.now(); // the first call can take milliseconds in a fresh worker (it loads perf_hooks' internals)
  const before = performance.now();
  const hr = process.hrtime();
  const after = performance.now();
  return hr[0] * 1e3 + hr[1] / 1e6 - (before + after) / 2;
})();

/**
 * Milliseconds on a clock all threads share, without allocating. performance.now() starts anew
 * in each worker, and performance.timeOrigin is the wall clock at that start: timeOrigin + now()
 * of two threads would differ by any step of the wall clock (NTP) between their starts.
 */
export const sharedNowMs = (): number => monotonicOffsetMs + performance.now();

export class SharedThrottle {
  private readonly i32: Int32Array;
  private readonly f64: Float64Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(BYTES)) {
    this.i32 = new Int32Array(buffer, 0, 2);
    this.f64 = new Float64Array(buffer);
  }

  /** Whether any limit is set: without one, requests skip the limiter (read without a lock: a late change is harmless). */
  get active(): boolean { return this.i32[I32_ACTIVE] !== 0; }

  /** New limits from now on (control plane). Buckets whose limit changed start afresh. */
  set(limits: IoLimits, now = sharedNowMs()): void {
    this.lock();
    try {
      BUCKETS.forEach((name, b) => {
        const { avg, max, maxLength } = limits[name];
        const at = F64_BASE + F64_PER_BUCKET * b;
        const burst = max > 0 ? max * maxLength : avg / 10;
        this.setLimiter(at, avg / 1000, avg > 0 ? burst / (avg / 1000) : 0, now);
        // The burst's own rate: a tenth of a second of max at once, then max per second.
        this.setLimiter(at + F64_PER_LIMITER, max / 1000, max > 0 ? 100 : 0, now);
      });
      this.f64[F64_IOPS_SIZE] = limits.iopsSize;
      this.i32[I32_ACTIVE] = anyLimit(limits) ? 1 : 0;
    } finally {
      this.unlock();
    }
  }

  /**
   * A request of `bytes` wants to start at `now`: 0 if it may (and it is
   * counted), else how many milliseconds until it may (nothing is counted).
   */
  admit(write: boolean, bytes: number, now: number): number {
    const f = this.f64;
    const size = f[F64_IOPS_SIZE];
    const ops = size > 0 && bytes > size ? bytes / size : 1;
    const side = write ? WRITE : READ;
    this.lock();
    const wait = Math.max(this.waitOf(BPS_TOTAL, now), this.waitOf(BPS_TOTAL + side, now),
      this.waitOf(IOPS_TOTAL, now), this.waitOf(IOPS_TOTAL + side, now));
    if (wait === 0) {
      this.charge(BPS_TOTAL, bytes, now);
      this.charge(BPS_TOTAL + side, bytes, now);
      this.charge(IOPS_TOTAL, ops, now);
      this.charge(IOPS_TOTAL + side, ops, now);
    }
    this.unlock();
    return wait;
  }

  /** A limiter's rate (per ms) and tolerance (ms); one whose limit changed starts afresh. */
  private setLimiter(at: number, rate: number, tolerance: number, now: number): void {
    const f = this.f64;
    if (f[at] !== rate || f[at + 1] !== tolerance) f[at + 2] = now;
    f[at] = rate;
    f[at + 1] = tolerance;
  }

  /** Milliseconds bucket `b` wants a request to wait; 0 when it may go (or the bucket has no limit). */
  private waitOf(b: number, now: number): number {
    const at = F64_BASE + F64_PER_BUCKET * b;
    return Math.max(this.limiterWait(at, now), this.limiterWait(at + F64_PER_LIMITER, now));
  }

  private limiterWait(at: number, now: number): number {
    const f = this.f64;
    if (f[at] === 0) return 0;
    const w = Math.max(f[at + 2], now) - now - f[at + 1];
    return w > 0 ? w : 0;
  }

  private charge(b: number, cost: number, now: number): void {
    const f = this.f64;
    for (let at = F64_BASE + F64_PER_BUCKET * b, i = 0; i < 2; i++, at += F64_PER_LIMITER) {
      if (f[at] !== 0) f[at + 2] = Math.max(f[at + 2], now) + cost / f[at];
    }
  }

  private lock(): void {
    // Held for a few loads and stores, by at most one thread per iothread and the control plane.
    while (Atomics.compareExchange(this.i32, I32_LOCK, 0, 1) !== 0);
  }

  private unlock(): void {
    Atomics.store(this.i32, I32_LOCK, 0);
  }
}
