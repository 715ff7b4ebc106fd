// io_uring I/O engine (see src/native/addon.ts for the JS contract).
//
// The data path of an iothread: one ring per engine and one engine per
// iothread, created and used on that thread only. JS stages requests in a
// submission table (a Float64Array we share) or, when it is full, passes one
// through uringEngineSubmit; either way they are built straight from
// guest-memory iovecs copied into preallocated per-slot storage, queued in the
// SQ, and issued in one io_uring_enter per batch (handle.flush(), or
// automatically when the SQ is full). Requests complete at once inside that
// enter (page-cache reads) go back as flush's result; the rest come back on
// the creating thread's loop: a uv_poll_t on the ring fd (readable while the
// CQ holds entries) wakes us, and the whole CQ is handed to JS in one call.
//
// No liburing: the three syscalls and the shared-ring protocol of the
// io_uring ABI are small enough to spell out, and it keeps the build free of
// another dependency. Ring indices follow the ABI's rules: the kernel's SQ head
// and CQ tail are read with acquire loads (they publish entries it wrote or
// consumed), our SQ tail and CQ head are written with release stores (they
// publish entries we wrote or hand back).
//
// Result semantics match the thread-pool engine in vublk.c: bytes transferred
// (short transfers are resubmitted for the remainder, so reads stop early only
// at end of file) or -errno. BLKDISCARD/BLKZEROOUT are ioctls io_uring cannot
// issue portably; they run on libuv's pool and complete through the same
// callback.
//
// Lifetime follows vublk.c's engine: the JS wrapper is pinned while requests
// are in flight, the poll handle keeps the loop alive only then, and an async
// cleanup hook lets a worker exit with requests outstanding: it drops what was
// queued but never issued and waits, without calling JS, for what the kernel
// holds, so no request still writes into guest memory once the worker is gone.
#include "common.h"

#include <linux/io_uring.h>
#include <sys/syscall.h>

// Defined in vublk.c (thread-pool engine); candidates for common.h.

static const napi_type_tag URING_TAG = {0x7675626c6b757269ULL, 0x6e67000000000001ULL};

#define URING_MAX_ENTRIES 32768  // IORING_MAX_ENTRIES
// Setup flags a caller may ask for (benchmarks); everything else is ours.
#define URING_USER_FLAGS                                                              \
  (IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SINGLE_ISSUER | \
   IORING_SETUP_DEFER_TASKRUN)
// Default: SINGLE_ISSUER (6.0) because only the creating thread ever submits,
// which lets the kernel skip locking; COOP_TASKRUN (5.19) so a completion does
// not interrupt the thread with an IPI while it runs JS (the work runs at our
// next syscall, and a thread asleep in epoll_wait is still woken).
// DEFER_TASKRUN (6.1) works here too and is available through setupFlags, but
// it did not make completions cheaper. Measured on the project's test VM
// (Linux 6.18, 2 vCPUs, ext4 on virtio-blk, 4 KiB O_DIRECT random I/O at queue
// depth 32, 8 runs each): 8.5/9.2 us CPU per read/write against 8.0/8.4 with
// the default, from about three io_uring_enter calls per wakeup instead of one
// (recent kernels run at most 20 deferred completions per enter), though it
// reached 9-18% more IOPS there. Kernels that refuse a flag set (EINVAL) get
// the next one.
#define URING_DEFAULT_FLAGS (IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN)
// -EAGAIN/-EINTR completions are retried, but not forever: a file that keeps
// answering -EAGAIN would otherwise spin through the loop.
#define URING_MAX_RETRIES 1000
// CQ drain rounds per wakeup before yielding to the rest of the loop.
#define URING_MAX_ROUNDS 8
// The submission table (layout shared with src/storage/uring.ts): the number
// of records, the index just past the last one, then the records: slot, op,
// fd, offset, iovCount, and iovCount (address, length) pairs.
enum { TABLE_COUNT = 0, TABLE_END = 1, TABLE_FIRST = 2, TABLE_RECORD = 5 };

// ---------------------------------------------------------------------------
// The ring

typedef struct {
  int fd;
  uint32_t flags;     // IORING_SETUP_* the ring was created with
  uint32_t features;  // IORING_FEAT_*
  uint32_t sq_entries, sq_mask, cq_entries, cq_mask;
  uint32_t sq_tail;  // next SQE we fill; published to *sq_ktail when submitting
  uint32_t *sq_khead, *sq_ktail, *sq_kflags;
  uint32_t *cq_khead, *cq_ktail;
  struct io_uring_sqe *sqes;
  struct io_uring_cqe *cqes;
  void *sq_map, *cq_map;
  size_t sq_map_len, cq_map_len, sqes_len;
} uring;

static int sys_setup(unsigned entries, struct io_uring_params *p) {
  return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
  return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static int sys_register(int fd, unsigned opcode, void *arg, unsigned nr_args) {
  return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
}

static void ring_close(uring *r) {
  if (r->sqes) munmap(r->sqes, r->sqes_len);
  if (r->cq_map && r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_map_len);
  if (r->sq_map) munmap(r->sq_map, r->sq_map_len);
  if (r->fd >= 0) close(r->fd);
  memset(r, 0, sizeof *r);
  r->fd = -1;
}

static void *map_ring(int fd, size_t len, off_t what) {
  // POPULATE: the rings are touched on every request; take the faults now.
  return mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, what);
}

// Creates the ring and maps it; 0 or -errno. cq_min: the CQ must hold one
// entry per slot so that it can never overflow (each slot has at most one
// request on the ring).
static int ring_open(uring *r, unsigned entries, unsigned cq_min, uint32_t flags) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  memset(r, 0, sizeof *r);
  r->fd = -1;
  p.flags = flags | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
  p.cq_entries = cq_min;
  int fd = sys_setup(entries, &p);
  if (fd < 0) return -errno;
  r->fd = fd;
  r->flags = p.flags;
  r->features = p.features;
  // NODROP: completions are never lost; SUBMIT_STABLE: the kernel is done with
  // an SQE and its iovec array once io_uring_enter returns (we rewrite both
  // when resubmitting). Both date from 5.5, as do CQSIZE and CLAMP.
  const uint32_t needed = IORING_FEAT_NODROP | IORING_FEAT_SUBMIT_STABLE;
  if ((p.features & needed) != needed || p.cq_entries < cq_min) {
    ring_close(r);
    return -ENOSYS;
  }

  r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
  r->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if (p.features & IORING_FEAT_SINGLE_MMAP) {
    // One mapping serves both rings.
    if (r->cq_map_len > r->sq_map_len) r->sq_map_len = r->cq_map_len;
    r->cq_map_len = r->sq_map_len;
  }
  r->sq_map = map_ring(fd, r->sq_map_len, IORING_OFF_SQ_RING);
  if (r->sq_map == MAP_FAILED) goto fail_map;
  if (p.features & IORING_FEAT_SINGLE_MMAP) {
    r->cq_map = r->sq_map;
  } else {
    r->cq_map = map_ring(fd, r->cq_map_len, IORING_OFF_CQ_RING);
    if (r->cq_map == MAP_FAILED) goto fail_map;
  }
  r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
  r->sqes = map_ring(fd, r->sqes_len, IORING_OFF_SQES);
  if (r->sqes == MAP_FAILED) goto fail_map;

  char *sq = r->sq_map, *cq = r->cq_map;
  r->sq_khead = (uint32_t *)(sq + p.sq_off.head);
  r->sq_ktail = (uint32_t *)(sq + p.sq_off.tail);
  r->sq_kflags = (uint32_t *)(sq + p.sq_off.flags);
  r->sq_mask = *(uint32_t *)(sq + p.sq_off.ring_mask);
  r->sq_entries = p.sq_entries;
  r->cq_khead = (uint32_t *)(cq + p.cq_off.head);
  r->cq_ktail = (uint32_t *)(cq + p.cq_off.tail);
  r->cq_mask = *(uint32_t *)(cq + p.cq_off.ring_mask);
  r->cq_entries = p.cq_entries;
  r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
  // SQEs are used in ring order, so the indirection array is the identity,
  // written once. The kernel only reads it.
  uint32_t *array = (uint32_t *)(sq + p.sq_off.array);
  for (uint32_t i = 0; i < p.sq_entries; i++) array[i] = i;
  r->sq_tail = *r->sq_ktail;
  return 0;

fail_map: {
  int err = errno;
  // MAP_FAILED is not NULL; ring_close must only see real mappings.
  if (r->sq_map == MAP_FAILED) r->sq_map = NULL;
  if (r->cq_map == MAP_FAILED) r->cq_map = NULL;
  if (r->sqes == MAP_FAILED) r->sqes = NULL;
  ring_close(r);
  return -err;
}
}

// 0, or -ENOSYS when the kernel lacks an opcode we need (FALLOCATE is the
// youngest, 5.6, as is IORING_REGISTER_PROBE itself).
static int ring_probe_ops(uring *r) {
  const unsigned nops = 256;
  struct io_uring_probe *p = calloc(1, sizeof *p + nops * sizeof p->ops[0]);
  if (!p) return -ENOMEM;
  int rc = sys_register(r->fd, IORING_REGISTER_PROBE, p, nops);
  if (rc < 0) {
    rc = errno == EINVAL ? -ENOSYS : -errno;
  } else {
    static const uint8_t needed[] = {IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC,
                                     IORING_OP_FALLOCATE};
    for (size_t i = 0; i < sizeof needed; i++) {
      uint8_t op = needed[i];
      if (op > p->last_op || op >= p->ops_len || !(p->ops[op].flags & IO_URING_OP_SUPPORTED))
        rc = -ENOSYS;
    }
  }
  free(p);
  return rc < 0 ? rc : 0;
}

static inline uint32_t sq_pending(const uring *r) {
  // Acquire: once the kernel has moved its head past an SQE we may reuse it.
  return r->sq_tail - __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
}

// ---------------------------------------------------------------------------
// Engine

typedef struct uring_engine uring_engine;

typedef struct {
  uv_work_t work;  // BLKDISCARD/BLKZEROOUT on the thread pool
  uring_engine *engine;
  struct iovec *iov;  // max_iov entries of preallocated storage
  uint64_t offset;    // file offset of the next byte to transfer
  uint64_t length;    // range operations
  int64_t done;       // bytes moved by earlier partial completions
  int64_t result;     // pool result, or the error of a failed submission
  uint32_t index;
  uint32_t iov_next;  // iov[iov_next, iov_count) is still to transfer
  uint32_t iov_count;
  uint32_t retries;  // consecutive -EAGAIN/-EINTR resubmissions
  int fd;
  int op;
  bool busy;
} uring_slot;

typedef struct {
  uint64_t enters, submitted, cqes, completed, wakeups, idle_wakeups, requeues, auto_flushes,
      flush_deliveries;
} uring_stats;

struct uring_engine {
  napi_env env;
  uv_loop_t *loop;
  uv_poll_t poll;     // on event_fd: our own kicks (work left after a wakeup, a refused batch)
  uv_poll_t cq_poll;  // on the ring fd, readable while the CQ holds entries
  napi_ref callback;  // onCompletions(count)
  napi_ref done_ref;  // the Float64Array behind `done`, kept alive
  napi_ref table_ref;  // the Float64Array behind `table`, kept alive
  napi_ref self;  // weak, made strong while requests are in flight
  napi_async_cleanup_hook_handle hook;
  uring ring;
  int event_fd;
  uring_slot *slots;
  struct iovec *iov_pool;
  uint32_t *failed;  // slots whose submission failed, completed on the next wakeup (2 * nslots)
  uint32_t nfailed;
  // Finished requests not yet told to JS: (slot, result) pairs, handed over in
  // one call per delivery. A slot appears at most once: it is free only once
  // finished, and JS (which alone resubmits it) runs only after the handover.
  double *done;
  uint32_t ndone;
  // Requests JS staged without calling us (the submission table of
  // src/storage/uring.ts): taken whenever we run, at a flush or after JS
  // handled a handover. Saves an N-API call, with its argument checks, per request.
  double *table;
  size_t table_len;
  uint32_t nslots;
  uint32_t max_iov;
  uint32_t in_flight;       // busy slots: queued, on the ring, on the pool or failed
  uint32_t pool_in_flight;  // of which on the thread pool
  int owners;               // wrapper + poll handle until closed + each pool request
  bool pinned;
  bool delivering;  // inside a wakeup or pool completion: SQEs queued now are ours to issue
  bool auto_issue;  // ... and some were queued
  bool poll_started;  // handles were initialised: they must be closed
  bool poll_closed;   // ... and all are
  int polls_open;     // initialised and not yet closed
  bool released;      // destroyed or torn down: no more submissions or callbacks
  bool finished;      // released and nothing left that touches the slots
  bool tearing_down;  // env is going away: finish quietly, never call JS
  bool env_gone;
  uring_stats stats;
};

static void engine_unref(uring_engine *e) {
  if (--e->owners == 0) free(e);
}

// The end of a release: free the slots once no pool thread can write into
// them and the poll handle is closed; during env teardown this is also what
// tells Node we are done.
static void engine_maybe_finish(uring_engine *e) {
  if (!e->released || e->finished || !e->poll_closed || e->pool_in_flight > 0) return;
  e->finished = true;
  free(e->slots);
  free(e->iov_pool);
  free(e->failed);
  e->slots = NULL;
  e->iov_pool = NULL;
  e->failed = NULL;
  if (e->hook) napi_remove_async_cleanup_hook(e->hook);
  e->hook = NULL;
}

static void engine_poll_closed(uv_handle_t *h) {
  uring_engine *e = h->data;
  if (--e->polls_open == 0) {
    // Only now: libuv may still have had the fd registered.
    if (e->event_fd >= 0) close(e->event_fd);
    e->event_fd = -1;
    e->poll_closed = true;
    engine_maybe_finish(e);
  }
  engine_unref(e);
}

// Stops the engine for good: no submissions, no callbacks. Idempotent.
static void engine_release(uring_engine *e) {
  if (e->released) return;
  e->released = true;
  if (!e->env_gone) {
    if (e->callback) napi_delete_reference(e->env, e->callback);
    if (e->done_ref) napi_delete_reference(e->env, e->done_ref);
    if (e->table_ref) napi_delete_reference(e->env, e->table_ref);
    if (e->self) napi_delete_reference(e->env, e->self);
  }
  e->callback = NULL;
  e->done_ref = NULL;
  e->done = NULL;
  e->table_ref = NULL;
  e->table = NULL;
  e->ndone = 0;
  e->self = NULL;
  e->pinned = false;
  // The ring fd's handle first: uv_close takes the fd out of epoll at once.
  // Then closing the ring fd lets the kernel finish or cancel whatever it
  // still holds; it no longer needs our memory (SUBMIT_STABLE).
  if (e->poll_started) {
    if (e->polls_open == 2) uv_close((uv_handle_t *)&e->cq_poll, engine_poll_closed);
    uv_close((uv_handle_t *)&e->poll, engine_poll_closed);
  }
  ring_close(&e->ring);
  if (!e->poll_started) {
    if (e->event_fd >= 0) close(e->event_fd);
    e->event_fd = -1;
    e->poll_closed = true;
  }
  engine_maybe_finish(e);
}

// A request is about to start: keep the wrapper (hence the callback) and the
// loop alive until the last one completes.
static napi_status engine_pin_for_request(napi_env env, uring_engine *e) {
  if (e->pinned) return napi_ok;
  napi_status st = napi_reference_ref(env, e->self, NULL);
  if (st != napi_ok) return st;
  e->pinned = true;
  uv_ref((uv_handle_t *)&e->cq_poll);  // requests pin only engines whose handles both started
  uv_ref((uv_handle_t *)&e->poll);
  return napi_ok;
}

// Nothing in flight any more: let go of the wrapper and of the loop.
static void engine_unpin_if_idle(uring_engine *e) {
  if (e->in_flight > 0 || !e->pinned || e->released) return;
  e->pinned = false;
  uv_unref((uv_handle_t *)&e->cq_poll);
  uv_unref((uv_handle_t *)&e->poll);
  napi_reference_unref(e->env, e->self, NULL);
}

static void engine_kick(uring_engine *e) {
  uint64_t one = 1;
  ssize_t n;
  do n = write(e->event_fd, &one, sizeof one);
  while (n < 0 && errno == EINTR);
  // EAGAIN: the counter is already huge, so a wakeup is pending anyway.
}

static int ring_enter(uring_engine *e, unsigned to_submit, unsigned flags) {
  for (;;) {
    e->stats.enters++;
    int n = sys_enter(e->ring.fd, to_submit, 0, flags);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

// Submission failed as a whole: take the queued SQEs back and complete their
// requests with the error on the next wakeup, so that whoever flushed never
// sees an exception for requests that are not theirs, and completions stay
// asynchronous.
static void sq_fail_pending(uring_engine *e, int err) {
  uring *r = &e->ring;
  uint32_t head = __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
  for (uint32_t i = head; i != r->sq_tail; i++) {
    uint32_t slot = (uint32_t)r->sqes[i & r->sq_mask].user_data;
    e->slots[slot].result = -err;
    e->failed[e->nfailed++] = slot;  // room: see failed_drain
  }
  // The kernel reads the tail only inside io_uring_enter (no SQPOLL), on this
  // thread, so taking back what it never consumed is safe.
  r->sq_tail = head;
  __atomic_store_n(r->sq_ktail, head, __ATOMIC_RELEASE);
  engine_kick(e);
}

// One io_uring_enter (more only if the kernel takes part of the SQ) that
// issues every queued SQE when `issue`, and with GETEVENTS also runs deferred
// completion work. Returns how many SQEs the kernel took.
static uint32_t ring_submit(uring_engine *e, unsigned enter_flags, bool issue) {
  uring *r = &e->ring;
  uint32_t total = 0;
  if (issue) e->auto_issue = false;
  for (;;) {
    uint32_t pending = issue ? sq_pending(r) : 0;
    if (pending == 0 && enter_flags == 0) return total;
    // Release: the SQE contents must be visible before the tail that covers
    // them. Unissued SQEs stay unpublished: the kernel looks only up to the tail.
    if (pending > 0) __atomic_store_n(r->sq_ktail, r->sq_tail, __ATOMIC_RELEASE);
    int n = ring_enter(e, pending, enter_flags);
    enter_flags = 0;
    if (n < 0 || (n == 0 && pending > 0)) {
      // n == 0 would mean no progress; never spin on it.
      if (pending > 0) sq_fail_pending(e, n < 0 ? -n : EAGAIN);
      return total;
    }
    total += (uint32_t)n;
    e->stats.submitted += (uint32_t)n;
  }
}

// A free SQE, flushing the SQ first when it is full. Never fails: after
// ring_submit the SQ is empty, either issued or taken back.
static struct io_uring_sqe *sq_reserve(uring_engine *e) {
  uring *r = &e->ring;
  if (sq_pending(r) >= r->sq_entries) {
    e->stats.auto_flushes++;
    ring_submit(e, 0, true);
  }
  return &r->sqes[r->sq_tail & r->sq_mask];
}

// Skips `n` transferred bytes, and any empty iovecs after them: a leading empty
// iovec would make a 0 result look like end of file.
static void slot_advance(uring_slot *s, uint64_t n) {
  s->done += (int64_t)n;
  s->offset += n;
  while (s->iov_next < s->iov_count && n >= s->iov[s->iov_next].iov_len) {
    n -= s->iov[s->iov_next].iov_len;
    s->iov_next++;
  }
  if (n > 0 && s->iov_next < s->iov_count) {  // the kernel never reports more than asked
    struct iovec *v = &s->iov[s->iov_next];
    v->iov_base = (char *)v->iov_base + n;
    v->iov_len -= n;
  }
}

// Queues the slot's (remaining) request as one SQE.
static void slot_queue(uring_engine *e, uring_slot *s) {
  struct io_uring_sqe *sqe = sq_reserve(e);
  if (e->delivering) e->auto_issue = true;
  memset(sqe, 0, sizeof *sqe);
  sqe->fd = s->fd;
  sqe->user_data = s->index;
  switch (s->op) {
    case IO_READ:
    case IO_WRITE:
      sqe->opcode = s->op == IO_READ ? IORING_OP_READV : IORING_OP_WRITEV;
      sqe->off = s->offset;
      sqe->addr = (uint64_t)(uintptr_t)(s->iov + s->iov_next);
      sqe->len = s->iov_count - s->iov_next;
      break;
    case IO_FLUSH:
      sqe->opcode = IORING_OP_FSYNC;
      sqe->fsync_flags = IORING_FSYNC_DATASYNC;
      break;
    default:  // IO_PUNCH_HOLE, IO_ZERO_RANGE
      sqe->opcode = IORING_OP_FALLOCATE;
      sqe->off = s->offset;
      // The fallocate SQE carries its length in addr and its mode in len.
      sqe->addr = s->length;
      sqe->len = FALLOC_FL_KEEP_SIZE |
                 (s->op == IO_PUNCH_HOLE ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
      break;
  }
  e->ring.sq_tail++;
}

// The request in `s` is over: free the slot (so JS may reuse it) and list it
// for the next handover.
static void slot_finish(uring_engine *e, uring_slot *s, int64_t result) {
  s->busy = false;
  e->in_flight--;
  e->stats.completed++;
  if (e->released || e->tearing_down) return;
  e->done[2 * e->ndone] = s->index;
  e->done[2 * e->ndone + 1] = (double)result;
  e->ndone++;
}

// A slot whose iovecs are already in s->iov starts: pinned, counted, queued.
static napi_status slot_start(uring_engine *e, uring_slot *s) {
  napi_status st = engine_pin_for_request(e->env, e);
  if (st != napi_ok) return st;
  s->busy = true;
  s->done = 0;
  s->retries = 0;
  e->in_flight++;
  slot_queue(e, s);
  return napi_ok;
}

static inline bool is_int_in(double v, double min, double max) {
  return v >= min && v <= max && v == (double)(int64_t)v;  // NaN fails the comparisons
}

// Requests staged in the table and not yet taken (they count as queued).
static uint32_t table_staged(const uring_engine *e) {
  double n = e->table ? e->table[TABLE_COUNT] : 0;
  return is_int_in(n, 0, e->nslots) ? (uint32_t)n : 0;
}

// A request that cannot go to the kernel: it completes with -err on the next
// wakeup, through the path of a batch the kernel refused (failed_drain).
static napi_status slot_fail(uring_engine *e, uring_slot *s, int err) {
  napi_status st = engine_pin_for_request(e->env, e);
  if (st != napi_ok) return st;
  s->busy = true;
  s->done = 0;
  s->result = -err;
  e->in_flight++;
  e->failed[e->nfailed++] = s->index;  // room: see failed_drain
  engine_kick(e);
  return napi_ok;
}

// Takes the requests JS staged in the submission table: each is checked as
// uringEngineSubmit checks its arguments and queued as an SQE. The table is
// empty afterwards. JS never stages a bad record, but should it: a record
// with bad fields in a free slot completes with -EINVAL; one naming a bad or
// busy slot cannot be completed and is skipped; the other records go on
// either way, unless the table's layout itself is broken (then the rest is
// lost). Returns 0, or EBUSY / EINVAL with `err` describing the first
// record that was skipped or lost (the caller reports it).
static int table_take(uring_engine *e, char *err, size_t errlen) {
  double *t = e->table;
  if (t == NULL || t[TABLE_COUNT] == 0) return 0;
  double count = t[TABLE_COUNT], end = t[TABLE_END];
  t[TABLE_COUNT] = 0;
  t[TABLE_END] = TABLE_FIRST;
  if (!is_int_in(count, 0, e->nslots) || !is_int_in(end, TABLE_FIRST, (double)e->table_len)) {
    snprintf(err, errlen, "submission table: %g records ending at %g do not fit", count, end);
    return EINVAL;
  }
  int first = 0;
  size_t at = TABLE_FIRST;
  for (uint32_t k = 0; k < (uint32_t)count; k++) {
    const double *r = t + at;
    // Without a sound length the next record cannot be found.
    if (at + TABLE_RECORD > (size_t)end || !is_int_in(r[4], 0, e->max_iov) ||
        at + TABLE_RECORD + 2 * (size_t)r[4] > (size_t)end) {
      snprintf(err, errlen, "submission table: record %u runs past the end or has a bad iovCount", k);
      return EINVAL;
    }
    uint32_t n = (uint32_t)r[4];
    const double *pairs = r + TABLE_RECORD;
    at += TABLE_RECORD + 2 * (size_t)n;
    if (!is_int_in(r[0], 0, e->nslots - 1) || e->slots[(uint32_t)r[0]].busy) {
      if (first == 0) {
        bool range = is_int_in(r[0], 0, e->nslots - 1);
        snprintf(err, errlen, range ? "submission table: record %u names busy slot %g" : "submission table: record %u has a bad slot", k, r[0]);
        first = range ? EBUSY : EINVAL;
      }
      continue;
    }
    uring_slot *s = &e->slots[(uint32_t)r[0]];
    int op = (int)r[1];
    bool ok = is_int_in(r[1], IO_READ, IO_FLUSH) && is_int_in(r[2], INT32_MIN, INT32_MAX) && is_int_in(r[3], 0, TWO_POW_53);
    if (op == IO_FLUSH) n = 0;
    for (uint32_t i = 0; ok && i < n; i++) {
      ok = is_int_in(pairs[2 * i], 0, TWO_POW_53) && is_int_in(pairs[2 * i + 1], 0, TWO_POW_53);
      s->iov[i].iov_base = (void *)(uintptr_t)(ok ? pairs[2 * i] : 0);
      s->iov[i].iov_len = (size_t)(ok ? pairs[2 * i + 1] : 0);
    }
    napi_status st;
    if (!ok) {
      st = slot_fail(e, s, EINVAL);
    } else {
      s->op = op;
      s->fd = (int)r[2];
      s->offset = (uint64_t)r[3];
      s->iov_count = n;
      s->iov_next = 0;
      s->done = 0;
      slot_advance(s, 0);  // skip leading empty iovecs
      st = slot_start(e, s);
    }
    if (st != napi_ok && first == 0) {
      snprintf(err, errlen, "submission table: cannot pin the engine for record %u", k);
      first = EINVAL;
    }
  }
  return first;
}

// A bad record staged inside a handover: there is no JS frame to throw into,
// so it goes where an exception thrown by the callback goes (call_js_plain).
static void engine_raise(napi_env env, int code, const char *message) {
  napi_value msg, code_v, err;
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_string_utf8(env, code == EBUSY ? "EBUSY" : "EINVAL", NAPI_AUTO_LENGTH, &code_v) != napi_ok)
    return;
  if (napi_create_range_error(env, code_v, msg, &err) == napi_ok) napi_fatal_exception(env, err);
}

// Tells JS about the finished requests: one call for the lot, which is where
// the cost of entering JS from here goes (rather than once per request).
static void done_handover(uring_engine *e) {
  uint32_t n = e->ndone;
  if (n == 0 || e->released || e->tearing_down) return;
  e->ndone = 0;
  napi_env env = e->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, self, argv[1];
  if (napi_get_reference_value(env, e->callback, &fn) == napi_ok && fn != NULL &&
      napi_get_reference_value(env, e->self, &self) == napi_ok && self != NULL &&
      napi_create_uint32(env, n, &argv[0]) == napi_ok)
    call_js_plain(env, self, fn, 1, argv);
  // What the callback staged joins what this round queued (delivering: issued
  // when the round ends). Nothing if the callback destroyed the engine.
  char err[128];
  int bad = e->released || e->tearing_down ? 0 : table_take(e, err, sizeof err);
  if (bad) engine_raise(env, bad, err);
  napi_close_handle_scope(env, scope);
}

static void cqe_complete(uring_engine *e, uint64_t user_data, int32_t res) {
  if (user_data >= e->nslots) return;  // not one of ours; cannot happen
  uring_slot *s = &e->slots[user_data];
  if (!s->busy) return;
  if (e->tearing_down) {
    slot_finish(e, s, res);  // nobody wants the rest of it
    return;
  }
  if (res == -EAGAIN || res == -EINTR) {
    if (++s->retries <= URING_MAX_RETRIES) {
      e->stats.requeues++;
      slot_queue(e, s);
      return;
    }
    slot_finish(e, s, res);
    return;
  }
  if (s->op != IO_READ && s->op != IO_WRITE) {
    slot_finish(e, s, res);
    return;
  }
  // Like the thread-pool engine: an error ends the request, whatever moved before.
  if (res < 0) {
    slot_finish(e, s, res);
    return;
  }
  if (res == 0) {
    // Nothing moved. Reads: end of file, report what we have. Writes: the
    // kernel made no progress and would not next time either; do not spin.
    // (An empty request lands here too, with done == 0.)
    bool stuck = s->op == IO_WRITE && s->iov_next < s->iov_count;
    slot_finish(e, s, stuck ? -EIO : s->done);
    return;
  }
  slot_advance(s, (uint64_t)res);
  if (s->iov_next < s->iov_count) {
    // Short transfer: go on with the remainder.
    s->retries = 0;
    e->stats.requeues++;
    slot_queue(e, s);
    return;
  }
  slot_finish(e, s, s->done);
}

// Consumes the CQEs present on entry; returns how many. Not more: the caller
// hands the finished requests to JS, which submits reads that the page cache
// serves at once, and chasing their CQEs would keep the loop from everything
// else (the caller comes back for them).
static uint32_t cq_drain(uring_engine *e) {
  uring *r = &e->ring;
  uint32_t head = *r->cq_khead;  // only we write it
  uint32_t tail = __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE);
  uint32_t seen = 0;
  while (head != tail) {
    const struct io_uring_cqe *cqe = &r->cqes[head & r->cq_mask];
    uint64_t user_data = cqe->user_data;
    int32_t res = cqe->res;
    __atomic_store_n(r->cq_khead, ++head, __ATOMIC_RELEASE);
    seen++;
    e->stats.cqes++;
    cqe_complete(e, user_data, res);
  }
  return seen;
}

// Completes the requests whose submission failed. JS, told afterwards, may
// resubmit and fail again: those wait for the next round, so a failing ring
// cannot trap us here. (Room for 2 * nslots entries, should a flush from
// outside a delivery fail while some wait here.)
static uint32_t failed_drain(uring_engine *e) {
  uint32_t n = e->nfailed;
  for (uint32_t i = 0; i < n; i++) slot_finish(e, &e->slots[e->failed[i]], e->slots[e->failed[i]].result);
  e->nfailed = 0;
  return n;
}

static bool ring_needs_getevents(const uring *r) {
  uint32_t kflags = __atomic_load_n(r->sq_kflags, __ATOMIC_RELAXED);
  // DEFER_TASKRUN completions reach the CQ only inside our io_uring_enter;
  // TASKRUN_FLAG says such work is waiting (and stays set if the kernel ran
  // only part of it, which newer kernels do in chunks). A CQ overflow backlog
  // is flushed the same way (not expected: the CQ holds a CQE per slot).
  return ((r->flags & IORING_SETUP_DEFER_TASKRUN) && (kflags & IORING_SQ_TASKRUN)) ||
         (kflags & IORING_SQ_CQ_OVERFLOW);
}

// After completions were delivered: issue what the callbacks (or resubmissions)
// queued, so nothing waits for a flush that may never come; then let go of
// the loop when idle. SQEs queued outside a delivery wait for handle.flush().
static void engine_settle(uring_engine *e) {
  if (e->released) return;
  if (e->tearing_down) {
    if (e->in_flight == 0) engine_release(e);  // the last request is in: finish the hook
    return;
  }
  if (e->auto_issue) ring_submit(e, 0, true);
  engine_unpin_if_idle(e);
}

static void eventfd_reset(uring_engine *e) {
  uint64_t value;
  ssize_t n;
  do n = read(e->event_fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  // EAGAIN: a spurious wakeup; nothing to do.
}

// A wakeup: deliver everything that is complete, round after round until the
// CQ stays empty, but at most URING_MAX_ROUNDS rounds: a callback that keeps
// resubmitting reads served from the page cache (completed inline) must not
// starve the rest of the loop. If work is left then, the engine kicks its own
// eventfd and carries on in the next loop iteration.
//
// The loop watches the ring fd itself, which is readable exactly while the CQ
// holds entries (or deferred completion work waits): draining the CQ is what
// quiets it, so there is no eventfd to reset per wakeup. Work deferred after
// an enter is not missed: the kernel sets IORING_SQ_TASKRUN, every round
// checks the flag, and the fd stays readable meanwhile.
static void engine_reap(uring_engine *e) {
  for (int round = 0;; round++) {
    uring *r = &e->ring;
    bool getevents = ring_needs_getevents(r);
    bool issue = e->auto_issue && sq_pending(r) > 0;
    bool entered = getevents || issue;
    if (entered && round == URING_MAX_ROUNDS) {
      // Yield to the rest of the loop; the kick brings us back next iteration,
      // since nothing would signal again for completions already waiting.
      engine_kick(e);
      return;
    }
    if (entered) ring_submit(e, getevents ? IORING_ENTER_GETEVENTS : 0, issue);
    if (*r->cq_khead == __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE) && e->nfailed == 0) {
      if (!entered) return;
      continue;  // a submit-only enter: check the flags once more
    }
    if (round == URING_MAX_ROUNDS) {
      engine_kick(e);
      return;
    }
    cq_drain(e);
    failed_drain(e);
    done_handover(e);
    if (e->released) return;  // destroyed by JS: the ring is unmapped
  }
}

// Delivers what is complete and issues what the callbacks queued.
static void engine_deliver(uring_engine *e) {
  e->delivering = true;
  engine_reap(e);
  engine_settle(e);
  e->delivering = false;
}

static void engine_on_poll(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  uring_engine *e = h->data;
  if (e->released) return;
  if (h == &e->poll) eventfd_reset(e);  // our own kick; anything later kicks again
  e->stats.wakeups++;
  uint64_t before = e->stats.cqes + e->stats.completed;
  engine_deliver(e);
  if (e->stats.cqes + e->stats.completed == before) e->stats.idle_wakeups++;
}

// Pool side of BLKDISCARD/BLKZEROOUT: touches only its own slot.
static void range_work(uv_work_t *req) {
  uring_slot *s = container_of(req, uring_slot, work);
  s->result = vublk_range_op(s->op, s->fd, s->offset, s->length);
}

static void range_after(uv_work_t *req, int status) {
  uring_slot *s = container_of(req, uring_slot, work);
  uring_engine *e = s->engine;
  e->delivering = true;
  slot_finish(e, s, status == UV_ECANCELED ? -ECANCELED : s->result);
  done_handover(e);
  // Counted down only now: the slot memory must outlive the callback, which
  // may destroy the engine (s itself may already be resubmitted; not touched).
  e->pool_in_flight--;
  if (e->released)
    engine_maybe_finish(e);  // may complete the cleanup hook
  else
    engine_settle(e);
  e->delivering = false;
  engine_unref(e);
}

// Env teardown (a worker exits). Requests never issued are dropped; those the
// kernel or the pool hold are waited for, like the thread-pool engine does:
// they may still write into guest memory. The poll handle stays referenced
// while anything is in flight, so the loop keeps turning; the last completion
// releases the engine, and the hook completes once the handle is closed.
static void engine_teardown(napi_async_cleanup_hook_handle handle, void *arg) {
  (void)handle;
  uring_engine *e = arg;
  e->tearing_down = true;
  if (e->released) return;  // destroyed already; engine_maybe_finish completes the hook
  uring *r = &e->ring;
  uint32_t head = __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
  for (uint32_t i = head; i != r->sq_tail; i++) {
    e->slots[r->sqes[i & r->sq_mask].user_data].busy = false;
    e->in_flight--;
  }
  r->sq_tail = head;
  for (uint32_t i = 0; i < e->nfailed; i++) {
    e->slots[e->failed[i]].busy = false;
    e->in_flight--;
  }
  e->nfailed = 0;
  if (e->in_flight == 0) engine_release(e);
}

static void engine_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  uring_engine *e = data;
  // Engines with requests in flight are pinned and teardown releases them
  // first, so this is a backstop: do not touch the dying env then.
  if (e->in_flight > 0) e->env_gone = true;
  engine_release(e);
  engine_unref(e);
}

// ---------------------------------------------------------------------------
// JS functions

static napi_value uring_destroyed(napi_env env, const char *fn) {
  char message[96];
  snprintf(message, sizeof message, "%s: engine has been destroyed", fn);
  napi_throw_error(env, "ERR_INVALID_STATE", message);
  return NULL;
}

static bool unwrap_engine(napi_env env, napi_value v, uring_engine **e) {
  return unwrap_tagged(env, v, &URING_TAG, "UringEngineHandle", (void **)e);
}

// Tries the setup flag sets in order, going on only when the kernel refuses
// one as unknown (EINVAL). SUBMIT_ALL (5.18) keeps one bad SQE from stalling
// the rest of a batch; without it the kernel stops at that SQE and our submit
// loop issues the rest.
static int ring_open_best(uring *r, unsigned entries, unsigned cq_min, bool explicit_flags,
                          uint32_t flags) {
  uint32_t sets[4];
  size_t n = 0;
  if (explicit_flags) {
    // Deferred completion work must be announced in the SQ flags, or a wakeup
    // could not tell whether io_uring_enter(GETEVENTS) is needed.
    if (flags & IORING_SETUP_DEFER_TASKRUN) flags |= IORING_SETUP_TASKRUN_FLAG;
    sets[n++] = flags | IORING_SETUP_SUBMIT_ALL;
    sets[n++] = flags;
  } else {
    sets[n++] = URING_DEFAULT_FLAGS | IORING_SETUP_SUBMIT_ALL;
    sets[n++] = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;  // before 6.0
    sets[n++] = IORING_SETUP_SUBMIT_ALL;
    sets[n++] = 0;
  }
  int rc = -EINVAL;
  for (size_t i = 0; i < n && rc == -EINVAL; i++) rc = ring_open(r, entries, cq_min, sets[i]);
  return rc;
}

static napi_value js_uring_flush_bound(napi_env env, napi_callback_info info);
static void flush_fn_finalize(napi_env env, void *data, void *hint);

static napi_value js_uring_create(napi_env env, napi_callback_info info) {
  ARGS(7);
  double nslots, max_iov, entries, flags_d = 0;
  if (!arg_integer(env, argv[0], "slots", 1, MAX_SLOTS, &nslots)) return NULL;
  if (!arg_integer(env, argv[1], "maxIov", 1, MAX_IOV, &max_iov)) return NULL;
  if (!arg_integer(env, argv[2], "entries", 1, URING_MAX_ENTRIES, &entries)) return NULL;
  double *done, *table;
  size_t table_len;
  if (!arg_float64_array(env, argv[3], "completions", 2 * (size_t)nslots, &done)) return NULL;
  if (!arg_float64_array(env, argv[4], "submissions", TABLE_FIRST + TABLE_RECORD, &table)) return NULL;
  NAPI_OK(env, napi_get_typedarray_info(env, argv[4], NULL, &table_len, NULL, NULL, NULL));
  if (!arg_function(env, argv[5], "onCompletions")) return NULL;
  napi_valuetype t;
  NAPI_OK(env, napi_typeof(env, argv[6], &t));
  bool explicit_flags = t != napi_undefined;
  if (explicit_flags) {
    if (!arg_integer(env, argv[6], "setupFlags", 0, UINT32_MAX, &flags_d)) return NULL;
    if ((uint32_t)flags_d & ~(uint32_t)URING_USER_FLAGS)
      return throw_range(env, "setupFlags may only hold COOP_TASKRUN, TASKRUN_FLAG, "
                              "SINGLE_ISSUER and DEFER_TASKRUN");
  }

  uv_loop_t *loop;
  napi_value obj;
  NAPI_OK(env, napi_get_uv_event_loop(env, &loop));
  NAPI_OK(env, napi_create_object(env, &obj));

  uring_engine *e = calloc(1, sizeof *e);
  if (e) {
    e->slots = calloc((size_t)nslots, sizeof *e->slots);
    e->iov_pool = calloc((size_t)nslots * (size_t)max_iov, sizeof *e->iov_pool);
    e->failed = calloc(2 * (size_t)nslots, sizeof *e->failed);
  }
  if (!e || !e->slots || !e->iov_pool || !e->failed) {
    if (e) {
      free(e->slots);
      free(e->iov_pool);
      free(e->failed);
    }
    free(e);
    return throw_errno(env, "calloc", ENOMEM);
  }
  e->event_fd = -1;

  // Kernel side first: nothing is registered with Node or libuv if it fails.
  const char *syscall_name = "io_uring_setup";
  unsigned cq_min = (unsigned)nslots > 2 * (unsigned)entries ? (unsigned)nslots : 2 * (unsigned)entries;
  int rc = ring_open_best(&e->ring, (unsigned)entries, cq_min, explicit_flags, (uint32_t)flags_d);
  if (rc == 0) {
    syscall_name = "io_uring_register";
    rc = ring_probe_ops(&e->ring);
  }
  if (rc == 0) {
    syscall_name = "eventfd";
    e->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->event_fd < 0) rc = -errno;
  }
  if (rc == 0 && (e->ring.flags & IORING_SETUP_DEFER_TASKRUN)) {
    // Deferred completion work does not make the ring fd readable: the
    // kernel announces it only through a registered eventfd.
    syscall_name = "io_uring_register";
    if (sys_register(e->ring.fd, IORING_REGISTER_EVENTFD, &e->event_fd, 1) < 0) rc = -errno;
  }
  if (rc < 0) {
    if (e->ring.fd >= 0 || e->ring.sq_map) ring_close(&e->ring);
    if (e->event_fd >= 0) close(e->event_fd);
    free(e->slots);
    free(e->iov_pool);
    free(e->failed);
    free(e);
    return throw_errno(env, syscall_name, -rc);
  }

  e->env = env;
  e->loop = loop;
  e->nslots = (uint32_t)nslots;
  e->max_iov = (uint32_t)max_iov;
  e->done = done;
  e->table = table;
  e->table_len = table_len;
  table[TABLE_COUNT] = 0;
  table[TABLE_END] = TABLE_FIRST;
  for (uint32_t i = 0; i < e->nslots; i++) {
    e->slots[i].engine = e;
    e->slots[i].index = i;
    e->slots[i].iov = e->iov_pool + (size_t)i * e->max_iov;
  }
  if (napi_wrap(env, obj, e, engine_finalize, NULL, NULL) != napi_ok) {
    ring_close(&e->ring);
    close(e->event_fd);
    free(e->slots);
    free(e->iov_pool);
    free(e->failed);
    free(e);
    return napi_failure(env);
  }
  e->owners = 1;  // the wrapper
  // From the first handle on, release closes what was initialised (polls_open).
  rc = uv_poll_init(loop, &e->poll, e->event_fd);
  if (rc == 0) {
    e->poll_started = true;
    e->polls_open = 1;
    e->owners++;
    e->poll.data = e;
    uv_unref((uv_handle_t *)&e->poll);  // the loop is kept alive only while requests are in flight (engine_pin)
    rc = uv_poll_init(loop, &e->cq_poll, e->ring.fd);
  }
  if (rc == 0) {
    e->polls_open = 2;
    e->owners++;
    e->cq_poll.data = e;
    uv_unref((uv_handle_t *)&e->cq_poll);
    rc = uv_poll_start(&e->poll, UV_READABLE, engine_on_poll);
    if (rc == 0) rc = uv_poll_start(&e->cq_poll, UV_READABLE, engine_on_poll);
  }
  if (rc < 0) {
    engine_release(e);
    return throw_errno(env, "uv_poll_start", -rc);
  }
  if (napi_type_tag_object(env, obj, &URING_TAG) != napi_ok ||
      napi_create_reference(env, argv[5], 1, &e->callback) != napi_ok ||
      napi_create_reference(env, argv[3], 1, &e->done_ref) != napi_ok ||
      napi_create_reference(env, argv[4], 1, &e->table_ref) != napi_ok ||
      napi_create_reference(env, obj, 0, &e->self) != napi_ok ||
      napi_add_async_cleanup_hook(env, engine_teardown, e, &e->hook) != napi_ok) {
    engine_release(e);
    return napi_failure(env);
  }
  napi_value flush;
  if (napi_create_function(env, "flush", NAPI_AUTO_LENGTH, js_uring_flush_bound, e, &flush) != napi_ok) {
    engine_release(e);
    return napi_failure(env);
  }
  e->owners++;
  if (napi_add_finalizer(env, flush, e, flush_fn_finalize, NULL, NULL) != napi_ok) {
    e->owners--;
    engine_release(e);
    return napi_failure(env);
  }
  if (napi_set_named_property(env, obj, "flush", flush) != napi_ok) {
    engine_release(e);
    return napi_failure(env);
  }
  return obj;
}

// Common head of both submit calls: the engine, a free slot, op and fd.
static uring_slot *slot_arg(napi_env env, napi_value *argv, const char *fn, int op_min,
                            int op_max, uring_engine **ep, int *op, int *fd) {
  uring_engine *e;
  double slot_d, op_d;
  if (!unwrap_engine(env, argv[0], &e)) return NULL;
  if (e->released) return (uring_destroyed(env, fn), NULL);
  if (!arg_integer(env, argv[1], "slot", 0, e->nslots - 1, &slot_d)) return NULL;
  if (!arg_integer(env, argv[2], "op", op_min, op_max, &op_d)) return NULL;
  if (!arg_fd(env, argv[3], fd)) return NULL;
  uring_slot *s = &e->slots[(uint32_t)slot_d];
  if (s->busy) {
    char message[96];
    snprintf(message, sizeof message, "%s: slot %u is busy", fn, s->index);
    return (throw_coded(env, fn, message, "EBUSY", EBUSY), NULL);
  }
  *ep = e;
  *op = (int)op_d;
  return s;
}

static napi_value js_uring_submit(napi_env env, napi_callback_info info) {
  ARGS(7);
  uring_engine *e;
  int op, fd;
  double offset = 0, count = 0;
  uring_slot *s = slot_arg(env, argv, "uringEngineSubmit", IO_READ, IO_FLUSH, &e, &op, &fd);
  if (!s) return NULL;
  uint32_t n_iov = 0;
  // Into the idle slot's own storage: the kernel reads it at submission and
  // we advance it in place after a short transfer.
  if (op != IO_FLUSH && !arg_iov_request(env, argv + 4, e->max_iov, s->iov, &offset, &n_iov)) return NULL;
  count = n_iov;
  s->op = op;
  s->fd = fd;
  s->offset = (uint64_t)offset;
  s->iov_count = (uint32_t)count;
  s->iov_next = 0;
  s->done = 0;
  slot_advance(s, 0);  // skip leading empty iovecs
  NAPI_OK(env, slot_start(e, s));
  return make_undefined(env);
}

static napi_value js_uring_submit_range(napi_env env, napi_callback_info info) {
  ARGS(6);
  uring_engine *e;
  int op, fd;
  double offset, length;
  uring_slot *s =
      slot_arg(env, argv, "uringEngineSubmitRange", IO_PUNCH_HOLE, IO_BLKZEROOUT, &e, &op, &fd);
  if (!s) return NULL;
  if (!arg_range(env, argv + 4, &offset, &length)) return NULL;
  s->op = op;
  s->fd = fd;
  s->offset = (uint64_t)offset;
  s->length = (uint64_t)length;
  s->iov_count = s->iov_next = 0;
  if (op == IO_PUNCH_HOLE || op == IO_ZERO_RANGE) {
    NAPI_OK(env, slot_start(e, s));
    return make_undefined(env);
  }

  // Block-device ioctls: on the pool, started at once (they are not batched).
  NAPI_OK(env, engine_pin_for_request(env, e));
  s->result = 0;
  int rc = uv_queue_work(e->loop, &s->work, range_work, range_after);
  if (rc < 0) {
    engine_unpin_if_idle(e);
    return throw_errno(env, "uv_queue_work", -rc);
  }
  s->busy = true;
  e->in_flight++;
  e->pool_in_flight++;
  e->owners++;
  return make_undefined(env);
}

// Issues the staged and queued requests with one io_uring_enter. With
// `collect`, requests that are complete by then (reads the page cache served
// inside that enter, or any CQE already waiting) are written to `completions`
// and their count returned: the caller delivers them itself, as the end of its
// batch, without a call back into JS from here or a later wakeup. Never inside
// a handover (the handover collects) and never requests whose submission
// failed (they complete from the loop, so flush never reports others' errors).
static napi_value uring_flush(napi_env env, uring_engine *e, napi_value collect_v) {
  if (e->released) return uring_destroyed(env, "flush");
  bool collect = false;
  napi_valuetype t;
  NAPI_OK(env, napi_typeof(env, collect_v, &t));
  if (t == napi_boolean) NAPI_OK(env, napi_get_value_bool(env, collect_v, &collect));
  else if (t != napi_undefined) return throw_type(env, "%s must be a boolean", "collect");
  char err[128];
  int bad = table_take(e, err, sizeof err);
  ring_submit(e, 0, true);  // the records before a bad one go out all the same
  if (bad == EBUSY) return throw_coded(env, "flush", err, "EBUSY", EBUSY);
  if (bad) return throw_range(env, err);
  if (!collect || e->delivering) return make_int(env, 0);
  if (ring_needs_getevents(&e->ring)) ring_submit(e, IORING_ENTER_GETEVENTS, false);
  if (*e->ring.cq_khead == __atomic_load_n(e->ring.cq_ktail, __ATOMIC_ACQUIRE)) return make_int(env, 0);
  e->stats.flush_deliveries++;
  cq_drain(e);
  uint32_t n = e->ndone;
  e->ndone = 0;
  // Short transfers and -EAGAIN went back on the SQ: on their way too.
  if (sq_pending(&e->ring) > 0) ring_submit(e, 0, true);
  engine_unpin_if_idle(e);
  return make_int(env, n);
}

// handle.flush(collect), for the engine the function was made for, which it
// carries as its data. The data path calls it once or twice per wakeup;
// unwrapping a type-tagged handle (two private-symbol lookups) was half of the
// call's user-space cost.
static napi_value js_uring_flush_bound(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *data;
  NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, &data));
  if (argc < 1) NAPI_OK(env, napi_get_undefined(env, &argv[0]));
  return uring_flush(env, data, argv[0]);
}

// The bound flush holds an owner count: the struct outlives the function
// (a call after destroy throws instead of touching freed memory).
static void flush_fn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  engine_unref(data);
}

static napi_value js_uring_in_flight(napi_env env, napi_callback_info info) {
  ARGS(1);
  uring_engine *e;
  if (!unwrap_engine(env, argv[0], &e)) return NULL;
  return make_int(env, e->released ? 0 : e->in_flight + table_staged(e));
}

static napi_value js_uring_stats(napi_env env, napi_callback_info info) {
  ARGS(1);
  uring_engine *e;
  if (!unwrap_engine(env, argv[0], &e)) return NULL;
  const uring_stats *st = &e->stats;
  napi_value obj;
  NAPI_OK(env, napi_create_object(env, &obj));
  if (!set_number_property(env, obj, "enters", (double)st->enters) ||
      !set_number_property(env, obj, "submitted", (double)st->submitted) ||
      !set_number_property(env, obj, "cqes", (double)st->cqes) ||
      !set_number_property(env, obj, "completed", (double)st->completed) ||
      !set_number_property(env, obj, "wakeups", (double)st->wakeups) ||
      !set_number_property(env, obj, "idleWakeups", (double)st->idle_wakeups) ||
      !set_number_property(env, obj, "requeues", (double)st->requeues) ||
      !set_number_property(env, obj, "autoFlushes", (double)st->auto_flushes) ||
      !set_number_property(env, obj, "flushDeliveries", (double)st->flush_deliveries) ||
      !set_number_property(env, obj, "queued", e->released ? 0 : (double)(sq_pending(&e->ring) + table_staged(e))) ||
      !set_number_property(env, obj, "sqEntries", (double)e->ring.sq_entries) ||
      !set_number_property(env, obj, "cqEntries", (double)e->ring.cq_entries) ||
      !set_number_property(env, obj, "setupFlags", (double)e->ring.flags) ||
      !set_number_property(env, obj, "features", (double)e->ring.features))
    return NULL;
  return obj;
}

static napi_value js_uring_destroy(napi_env env, napi_callback_info info) {
  ARGS(1);
  uring_engine *e;
  if (!unwrap_engine(env, argv[0], &e)) return NULL;
  uint32_t busy = e->released ? 0 : e->in_flight + table_staged(e);
  if (busy > 0) {
    char message[96];
    snprintf(message, sizeof message, "uringEngineDestroy: %u requests staged or in flight", busy);
    return throw_coded(env, "uringEngineDestroy", message, "EBUSY", EBUSY);
  }
  // Idempotent; the struct itself goes with the wrapper.
  engine_release(e);
  return make_undefined(env);
}

napi_status vublk_register_uring(napi_env env, napi_value exports) {
#define FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL}
  const napi_property_descriptor fns[] = {
      FN("uringEngineCreate", js_uring_create),
      FN("uringEngineSubmit", js_uring_submit),
      FN("uringEngineSubmitRange", js_uring_submit_range),
      FN("uringEngineInFlight", js_uring_in_flight),
      FN("uringEngineStats", js_uring_stats),
      FN("uringEngineDestroy", js_uring_destroy),
  };
#undef FN
  return napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);
}
