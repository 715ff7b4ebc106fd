// Typed view of the project's N-API addon (native/vublk.c).
// The addon does only what Node cannot: fd passing, mmap, eventfd, readiness
// watchers on the calling thread's loop, memfd, and I/O engines (thread pool,
// io_uring) that read and write guest memory in place. Policy stays in TypeScript.
//
// Conventions (native/vublk.c):
// * Failed syscalls throw an Error with message "<syscall>: <strerror>" and Node-style
//   `code` ('ENOENT', 'EADDRINUSE', ...), `errno` (positive) and `syscall` properties.
//   Wrong argument types throw TypeError, out-of-range or fractional numbers RangeError.
// * fd arguments are any int32; a negative or closed fd surfaces as EBADF.
// * Context-aware: loads in any number of worker_threads; watchers and engines call back
//   on the loop of the thread that created them. A callback that throws becomes an
//   uncaught exception ('uncaughtException', or the worker's 'error' event).
import * as path from 'node:path';

/** Readiness bits for watch(); same values as libuv's UV_READABLE / UV_WRITABLE. */
export const POLL_READABLE = 1;
export const POLL_WRITABLE = 2;

/** Operations of the I/O engine. */
export {
  IO_BLKDISCARD, IO_BLKZEROOUT, IO_FLUSH, IO_PUNCH_HOLE, IO_READ, IO_WRITE, IO_ZERO_RANGE,
} from './io-ops';

/**
 * io_uring setup flags uringEngineCreate() accepts in `setupFlags` (values of the kernel ABI,
 * linux/io_uring.h). Only for measurements; the default is chosen by the addon.
 */
export const URING_SETUP_COOP_TASKRUN = 1 << 8;
export const URING_SETUP_TASKRUN_FLAG = 1 << 9;
export const URING_SETUP_SINGLE_ISSUER = 1 << 12;
export const URING_SETUP_DEFER_TASKRUN = 1 << 13;

export interface Watcher {
  /** Stop watching and release the handle; idempotent. Does not close the fd. */
  stop(): void;
}

export interface IoEngineHandle { readonly __brand: 'IoEngineHandle' }
export interface UringEngineHandle {
  readonly __brand: 'UringEngineHandle';
  /**
   * Take the staged submissions and issue everything queued with one io_uring_enter. With
   * `collect`, requests complete by then are written to `completions` as (slot, result) pairs
   * and their count returned (0 from inside onCompletions, which collects them itself);
   * otherwise they arrive through onCompletions and the result is 0. Does not throw for kernel
   * errors: if the kernel refuses the batch, those requests complete with -errno through
   * onCompletions. Throws (RangeError, or EBUSY for a busy slot) for a bad staged record;
   * the records before it were issued, the rest dropped. Bound to its engine (it works
   * without `this`), so the data path's calls skip checking and unwrapping a handle.
   */
  flush(collect?: boolean): number;
}

/** Counters of an io_uring engine (uringEngineStats), for tests, metrics and benchmarks. */
export interface UringStats {
  /** io_uring_enter calls (submissions and, with DEFER_TASKRUN, completion runs). */
  enters: number;
  /** SQEs the kernel accepted. */
  submitted: number;
  /** CQEs consumed. */
  cqes: number;
  /** Requests completed through onComplete (pool range operations included). */
  completed: number;
  /** Eventfd wakeups of the engine's poll handle. */
  wakeups: number;
  /** Wakeups that found nothing to complete. */
  idleWakeups: number;
  /** Resubmissions: remainders of short transfers and -EAGAIN/-EINTR retries. */
  requeues: number;
  /** Flushes forced by a full SQ inside a submit call. */
  autoFlushes: number;
  /** Flushes that found requests already complete (served from the page cache) and delivered them at once. */
  flushDeliveries: number;
  /** Requests staged in the submission table or queued in the SQ, not yet issued. */
  queued: number;
  sqEntries: number;
  cqEntries: number;
  /** IORING_SETUP_* the ring runs with (see URING_SETUP_*; other bits are the addon's own). */
  setupFlags: number;
  /** IORING_FEAT_* the kernel reported. */
  features: number;
}

export interface NativeAddon {
  // --- Unix stream sockets -------------------------------------------------
  /**
   * Non-blocking, close-on-exec listening socket bound to `path`. An existing path fails with
   * EADDRINUSE and is never unlinked here (stale-socket policy is the caller's); a path that
   * does not fit sun_path fails with ENAMETOOLONG.
   */
  unixListen(path: string, backlog: number): number;
  /**
   * Non-blocking, close-on-exec socket bound to `path` but not listening: connect() is refused
   * until listen(), so the socket file's mode and owner can be set first. Same errors as unixListen.
   */
  unixBind(path: string): number;
  /** listen(2) on a bound socket. */
  listen(fd: number, backlog: number): void;
  /** Connected stream socket to `path`, switched to non-blocking after connect. */
  unixConnect(path: string): number;
  /** Accepted fd (non-blocking, close-on-exec), or -1 when nothing is pending. */
  accept(listenFd: number): number;
  /** Send one datagram to a Unix datagram socket ('@name' = abstract), like sd_notify; returns bytes sent. */
  unixDatagramSend(path: string, buf: Uint8Array): number;
  /** Pair of connected non-blocking stream sockets (tests). */
  socketpair(): [number, number];
  /**
   * recvmsg() up to `length` (>= 1, so that 0 can only mean EOF) bytes into `buf` at `offset`;
   * received fds (at most 32, close-on-exec) are appended to `fds`. Returns bytes read, 0 on
   * EOF, -1 on EAGAIN. On MSG_CTRUNC every received fd is closed and an Error with code
   * 'ECTRUNC' (errno EMSGSIZE) is thrown; any control message other than SCM_RIGHTS likewise
   * closes the fds and throws code 'EPROTO'. The bytes of such a message are lost.
   */
  recvmsg(fd: number, buf: Uint8Array, offset: number, length: number, fds: number[]): number;
  /**
   * sendmsg() of buf[offset, offset+length) with optional fds (at most 32, else RangeError;
   * sending fds needs length >= 1). Returns bytes sent or -1 on EAGAIN; a dead peer throws
   * EPIPE/ECONNRESET (never SIGPIPE). On a partial send the fds went with the bytes that
   * were sent: send the rest without them.
   */
  sendmsg(fd: number, buf: Uint8Array, offset: number, length: number, fds: number[] | null): number;
  /** close(2); errors other than EBADF are ignored. */
  close(fd: number): void;

  // --- memory ----------------------------------------------------------------
  /** mmap(MAP_SHARED) of fd; returns the host address as a Number. */
  mmap(fd: number, length: number, offset: number, writable: boolean): number;
  munmap(address: number, length: number): void;
  /**
   * External ArrayBuffer over [address, address+length) of an existing mapping; no copy, no
   * finalizer (the mapping stays the caller's). length is 1..2^32. Touching it after munmap()
   * is a segfault, not an exception: detach() every such buffer before unmapping.
   */
  arrayBuffer(address: number, length: number): ArrayBuffer;
  /** Detach an ArrayBuffer from arrayBuffer() so later access cannot touch unmapped memory. */
  detach(buffer: ArrayBuffer): void;
  /** memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING); name is at most 249 bytes. */
  memfdCreate(name: string): number;

  // --- eventfd ---------------------------------------------------------------
  /** eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK). */
  eventfd(initval: number): number;
  /** Read and reset the counter; 0 if it was zero (EAGAIN). Values above 2^53 lose precision. */
  eventfdRead(fd: number): number;
  /** Add `value` to the counter (EAGAIN is ignored: the counter is already signalled). */
  eventfdWrite(fd: number, value: number): void;
  /** timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK): a timer finer than libuv's milliseconds. */
  timerfd(): number;
  /** Arm the timer to expire once, `ns` nanoseconds from now (0 disarms); watchEventfd() it. */
  timerfdArm(fd: number, ns: number): void;

  // --- readiness -------------------------------------------------------------
  /**
   * Call `callback(events)` (with `this` = the Watcher) on this thread's event loop whenever fd
   * is ready (level-triggered: drain the fd or stop, or it fires again). events < 0 is -errno.
   * An active watcher keeps the loop (process or worker) alive and is kept alive itself even if
   * the object is dropped; stop() it before closing the fd. One watcher per fd per thread:
   * a second one fails with EEXIST until the first is stopped. Watching sets O_NONBLOCK on
   * fd (libuv's uv_poll_init does, as documented since 1.2.2), so recvmsg/sendmsg on a watched
   * fd return -1 instead of blocking even when a peer handed it over blocking (QEMU's
   * back-end channel socketpair).
   */
  watch(fd: number, events: number, callback: (events: number) => void): Watcher;
  /**
   * watch() for readability of an eventfd that the addon reads (resets) before each callback,
   * saving JS the eventfdRead call per wakeup. events < 0 is -errno of that read (-EINVAL:
   * fd is not an eventfd). Unlike watch(), the callback is a plain call (the data plane's
   * wakeups, where the callback scope is a measurable cost): promise jobs and nextTicks it
   * queues run at the end of the loop iteration, before immediates, not before the
   * iteration's next I/O callback.
   */
  watchEventfd(fd: number, callback: (events: number) => void): Watcher;

  // --- I/O engine (thread pool) ----------------------------------------------
  /**
   * An engine with `slots` request slots of up to `maxIov` iovecs each. Completions run on
   * the creating thread's loop as `onComplete(slot, result)`: result is bytes transferred
   * (reads stop early only at end of file) or -errno; a bad iov address is -EFAULT, a write
   * the kernel makes no progress on is -EIO. The slot is free again when onComplete runs, so
   * it may resubmit. The engine stays alive while requests are in flight. Runs on libuv's
   * thread pool (UV_THREADPOOL_SIZE, default 4, shared with fs and dns). slots <= 65536,
   * maxIov <= 1024.
   */
  ioEngineCreate(slots: number, maxIov: number, onComplete: (slot: number, result: number) => void): IoEngineHandle;
  /**
   * Queue one request in `slot`. `iov` holds (hostAddress, length) pairs; `iovCount` pairs are used.
   * IO_FLUSH ignores offset and iov. Throws if the slot is busy (code 'EBUSY'), arguments are
   * out of range, or the engine was destroyed.
   */
  ioEngineSubmit(engine: IoEngineHandle, slot: number, op: number, fd: number, offset: number,
                 iov: Float64Array, iovCount: number): void;
  /**
   * Queue a range operation (IO_PUNCH_HOLE, IO_ZERO_RANGE, IO_BLKDISCARD, IO_BLKZEROOUT from io-ops.ts)
   * on [offset, offset+length) in `slot`. Completion result: 0 or -errno. offset and length are
   * integers in [0, 2^53]; length 0 goes to the kernel as is (fallocate answers -EINVAL).
   */
  ioEngineSubmitRange(engine: IoEngineHandle, slot: number, op: number, fd: number, offset: number, length: number): void;
  /**
   * Run one IO_READ / IO_WRITE / IO_FLUSH on the calling thread; returns bytes transferred or -errno.
   * Same semantics as a pool request (short transfers continued, EOF reported). At most 1024 iov pairs.
   */
  ioRun(op: number, fd: number, offset: number, iov: Float64Array, iovCount: number): number;
  /** Run one range operation on the calling thread; returns 0 or -errno. */
  ioRunRange(op: number, fd: number, offset: number, length: number): number;
  /** Requests still running in the pool. */
  ioEngineInFlight(engine: IoEngineHandle): number;
  /** Free the engine; throws EBUSY with requests in flight. Idempotent. */
  ioEngineDestroy(engine: IoEngineHandle): void;

  // --- users and groups ------------------------------------------------------
  /** uid of a user name through NSS (getpwnam_r), or -1 when there is none. */
  userId(name: string): number;
  /** gid of a group name through NSS (getgrnam_r), or -1 when there is none. */
  groupId(name: string): number;

  // --- I/O engine (io_uring) -------------------------------------------------
  /**
   * An io_uring engine: one ring with an SQ of `entries` (1..32768, rounded up to a power of two)
   * and a CQ of at least max(slots, 2 * entries), so completions can never overflow. Same slots,
   * iovecs and results as ioEngineCreate, completions on the creating thread (below); a result
   * is bytes transferred (short transfers are resubmitted for the
   * remainder, so reads stop early only at end of file; -EAGAIN/-EINTR are retried up to 1000
   * times) or -errno. Use an engine only on the thread that created it (one per iothread).
   *
   * Submissions: JS stages them in `submissions`, a table the addon reads whenever it runs
   * (layout: src/storage/uring.ts, stageSubmission; at least 7 elements), or passes one through
   * uringEngineSubmit (the table saves that call's argument checks per request). Both are
   * queued and issued together by the handle's flush() (one io_uring_enter per batch) or
   * automatically when the SQ is full. Requests staged or queued from inside onCompletions are
   * also issued when that round of completions ends, so a callback need not flush.
   *
   * Finished requests are handed over in batches: `completions` (at least 2 * slots elements,
   * never transferred) receives (slot, result) pairs and `onCompletions(count)` says how many
   * pairs to read from its start, once per round instead of once per request. It runs from the
   * loop only, as a plain call like watchEventfd's callbacks. flush(true) instead returns the
   * requests already complete after its enter (reads served from the page cache) in the same
   * pairs, for the caller to deliver. The fd must stay open until the request is issued.
   *
   * Completions: the loop watches the ring fd, readable while the CQ holds entries (with
   * DEFER_TASKRUN, an eventfd registered with the ring); each wakeup drains the CQ.
   * By default the ring runs with SINGLE_ISSUER | COOP_TASKRUN (no IPI into a thread busy with
   * JS), falling back to COOP_TASKRUN alone and then to no flags on kernels that refuse them.
   * DEFER_TASKRUN works as well but cost ~7% more CPU per request on Linux 6.18 (~3
   * io_uring_enter calls per wakeup instead of 1), for more IOPS (see native/uring.c). `setupFlags`
   * (URING_SETUP_*) overrides the default for measurements, without fallback (DEFER_TASKRUN
   * implies TASKRUN_FLAG).
   *
   * At env teardown (a worker exiting) requests queued but not issued are dropped and those the
   * kernel or the pool hold are waited for without calling JS, as with ioEngineCreate: once the
   * worker's 'exit' event fired nothing writes into guest memory any more. A request that never
   * completes (say a read from an empty FIFO) therefore keeps the worker from exiting.
   *
   * Throws with the errno code of the failing step when io_uring cannot be used: ENOSYS (no
   * io_uring, or no READV/WRITEV/FSYNC/FALLOCATE opcodes: kernels before 5.6), EPERM
   * (kernel.io_uring_disabled, seccomp), ENOMEM (locked-memory limit on old kernels), ...
   */
  uringEngineCreate(slots: number, maxIov: number, entries: number, completions: Float64Array,
                    submissions: Float64Array, onCompletions: (count: number) => void,
                    setupFlags?: number): UringEngineHandle;
  /** Queue IO_READ / IO_WRITE / IO_FLUSH (fdatasync) in `slot`, as ioEngineSubmit. Not issued until flushed. */
  uringEngineSubmit(engine: UringEngineHandle, slot: number, op: number, fd: number, offset: number,
                    iov: Float64Array, iovCount: number): void;
  /**
   * Queue a range operation on [offset, offset+length): IO_PUNCH_HOLE / IO_ZERO_RANGE go on the
   * ring (fallocate with KEEP_SIZE, issued with the batch); IO_BLKDISCARD / IO_BLKZEROOUT run
   * on libuv's thread pool and start at once. Result: 0 or -errno; validation as ioEngineSubmitRange.
   */
  uringEngineSubmitRange(engine: UringEngineHandle, slot: number, op: number, fd: number, offset: number,
                         length: number): void;
  /** Requests staged, queued, on the ring or on the pool, not yet completed. */
  uringEngineInFlight(engine: UringEngineHandle): number;
  uringEngineStats(engine: UringEngineHandle): UringStats;
  /** Close the ring and free the engine; throws EBUSY with requests staged or in flight. Idempotent. */
  uringEngineDestroy(engine: UringEngineHandle): void;
}

export interface ThreadFunctions {
  /** Pin the calling thread to these CPUs (sched_setaffinity of this thread only). */
  setThreadAffinity(cpus: number[]): void;
  getThreadAffinity(): number[];
  /** Kernel thread id of the calling thread. */
  gettid(): number;
  /** Name the calling thread (at most 15 characters; shown in /proc/self/task/TID/comm). */
  setThreadName(name: string): void;
}

/** Geometry of a block device, from its ioctls (native/blkdev.c). Sizes in bytes. */
export interface BlockDeviceInfo {
  /** BLKGETSIZE64. Devices above 2^53 bytes throw EOVERFLOW. */
  sizeBytes: number;
  /** BLKSSZGET: smallest unit the device addresses (512 or 4096 in practice). */
  logicalBlockSize: number;
  /** BLKPBSZGET: smallest unit written without read-modify-write. */
  physicalBlockSize: number;
  /** BLKIOMIN / BLKIOOPT: preferred minimum and optimal I/O sizes; 0 = not reported. */
  minIoSize: number;
  optIoSize: number;
  /** BLKALIGNOFF: offset of the first naturally aligned physical block (-1 = misaligned). */
  alignmentOffset: number;
  /** BLKROGET: the device is read-only (opening it read-write fails with EACCES). */
  readOnly: boolean;
  /** BLKROTATIONAL; true when the kernel cannot say (before Linux 5.3). */
  rotational: boolean;
  /** Device number (st_rdev), for /sys/dev/block/MAJOR:MINOR. */
  major: number;
  minor: number;
}

/** Direct-I/O constraints of an open file (statx STATX_DIOALIGN). */
export interface DirectIoAlignment {
  /** Required alignment of user buffers in memory, bytes. */
  memoryAlignment: number;
  /** Required alignment of file offsets and lengths, bytes. */
  offsetAlignment: number;
}

export interface BlockDeviceFunctions {
  /**
   * Geometry of the block device open on `fd` (any access mode). A fd that is not a block
   * device throws code 'ENOTBLK'; failed ioctls throw "ioctl(BLKxxx): <strerror>".
   */
  blockDeviceInfo(fd: number): BlockDeviceInfo;
  /**
   * statx(fd, STATX_DIOALIGN): null when the kernel (before 6.1; 6.11 for block devices) or
   * the filesystem (tmpfs, overlayfs, ...) does not report it; both fields 0 when the file
   * supports no O_DIRECT at all.
   */
  directIoAlignment(fd: number): DirectIoAlignment | null;
}

// dist/src/native/addon.js -> repository root is three levels up.
const addonPath = path.join(__dirname, '..', '..', '..', 'native', 'build', 'Release', 'vublk_native.node');

// eslint-disable-next-line @typescript-eslint/no-var-requires
export const native: NativeAddon & ThreadFunctions & BlockDeviceFunctions = require(addonPath) as NativeAddon & ThreadFunctions & BlockDeviceFunctions;
