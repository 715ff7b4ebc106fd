// vublk_native: the handful of things Node cannot do on its own (fd passing,
// mmap, eventfd, readiness watchers, memfd, guest-memory I/O in the thread
// pool). The JS-facing contract lives in src/native/addon.ts; policy stays in
// TypeScript, so everything here is a thin, strictly validated syscall wrapper.
//
// Threading and lifetime rules followed throughout:
//  * No mutable globals: the addon is loaded by several worker_threads at once.
//    Per-env data hangs off napi_set_instance_data; everything else is owned
//    by the JS object that handed it out.
//  * Callbacks into JS run on the loop of the thread that created the watcher
//    or engine. watch()'s and the thread-pool engine's go through
//    napi_make_callback, so that process.nextTick and promise jobs queued by
//    the callback run right after it, as they would for a core callback. The
//    data plane's wakeups (watchEventfd, io_uring handovers) are plain calls,
//    whose queued jobs run at the end of the loop iteration instead
//    (call_js_plain in common.h). A throwing callback is turned into an
//    uncaught exception with napi_fatal_exception (there is no JS frame to
//    return the error to), exactly like core's napi_async_work completion
//    path: 'uncaughtException' handlers see it, otherwise the process (or
//    worker) dies the normal way.
//  * Env teardown uses async cleanup hooks: Node keeps spinning the loop until
//    we signal completion, which lets uv handles finish closing and in-flight
//    thread-pool requests land before the loop is closed (a worker aborts in
//    uv_loop_close otherwise).

#include "common.h"

#include <grp.h>
#include <pwd.h>
#include <sys/timerfd.h>
#include <time.h>

// Tags make unwrap safe against foreign wrapped objects being passed back in.
static const napi_type_tag WATCHER_TAG = {0x7675626c6b776174ULL, 0x6368657200000001ULL};
static const napi_type_tag ENGINE_TAG = {0x7675626c6b656e67ULL, 0x696e650000000001ULL};

// ---------------------------------------------------------------------------
// Unix stream sockets

static bool arg_sockaddr(napi_env env, napi_value v, const char *syscall, struct sockaddr_un *sa,
                         socklen_t *salen) {
  memset(sa, 0, sizeof *sa);
  size_t n;
  bool too_long;
  if (!arg_cstring(env, v, "path", sa->sun_path, sizeof sa->sun_path, &n, &too_long)) return false;
  // An empty path would mean autobind/abstract namespace, which we never want.
  if (n == 0) return (throw_errno(env, syscall, ENOENT), false);
  if (too_long) return (throw_errno(env, syscall, ENAMETOOLONG), false);
  sa->sun_family = AF_UNIX;
  *salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  return true;
}

static void close_keep_errno(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

static napi_value js_unix_listen(napi_env env, napi_callback_info info) {
  ARGS(2);
  struct sockaddr_un sa;
  socklen_t salen;
  int32_t backlog;
  if (!arg_sockaddr(env, argv[0], "bind", &sa, &salen)) return NULL;
  if (!arg_int32(env, argv[1], "backlog", 0, INT32_MAX, &backlog)) return NULL;

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  // bind() refuses an existing path with EADDRINUSE; whether a stale socket
  // may be removed is the caller's decision, so no unlink here.
  if (bind(fd, (struct sockaddr *)&sa, salen) < 0) {
    close_keep_errno(fd);
    return throw_errno(env, "bind", errno);
  }
  if (listen(fd, backlog) < 0) {
    int err = errno;
    close(fd);
    unlink(sa.sun_path);  // we created it a moment ago; leaving it would block a retry
    return throw_errno(env, "listen", err);
  }
  return make_int(env, fd);
}

// Bound but not yet listening: until listen(), connect() is refused, so the
// caller can set the socket file's mode and owner before anyone can attach.
static napi_value js_unix_bind(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct sockaddr_un sa;
  socklen_t salen;
  if (!arg_sockaddr(env, argv[0], "bind", &sa, &salen)) return NULL;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (bind(fd, (struct sockaddr *)&sa, salen) < 0) {
    close_keep_errno(fd);
    return throw_errno(env, "bind", errno);
  }
  return make_int(env, fd);
}

static napi_value js_listen(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  int32_t backlog;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_int32(env, argv[1], "backlog", 0, INT32_MAX, &backlog)) return NULL;
  if (listen(fd, backlog) < 0) return throw_errno(env, "listen", errno);
  return make_undefined(env);
}

static napi_value js_unix_connect(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct sockaddr_un sa;
  socklen_t salen;
  if (!arg_sockaddr(env, argv[0], "connect", &sa, &salen)) return NULL;

  // Blocking connect: on AF_UNIX it completes at once unless the listener's
  // backlog is full, and callers want a connected fd or an error, not EINPROGRESS.
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (connect(fd, (struct sockaddr *)&sa, salen) < 0) {
    int err = errno;
    if (err == EINTR) {
      // The connection keeps going after a signal; restarting connect() would
      // give EALREADY, so wait for it and read the outcome instead.
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      int r;
      do r = poll(&p, 1, -1);
      while (r < 0 && errno == EINTR);
      socklen_t len = sizeof err;
      if (r < 0)
        err = errno;
      else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    }
    if (err != 0) {
      close(fd);
      return throw_errno(env, "connect", err);
    }
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    close_keep_errno(fd);
    return throw_errno(env, "fcntl", errno);
  }
  return make_int(env, fd);
}

static napi_value js_accept(napi_env env, napi_callback_info info) {
  ARGS(1);
  int lfd;
  if (!arg_fd(env, argv[0], &lfd)) return NULL;
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return make_int(env, fd);
    // A peer that gave up before we got to it is not the listener's problem.
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_int(env, -1);
    return throw_errno(env, "accept4", errno);
  }
}

static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    return throw_errno(env, "socketpair", errno);
  napi_value arr, a, b;
  if (napi_create_array_with_length(env, 2, &arr) != napi_ok ||
      napi_create_int32(env, sv[0], &a) != napi_ok || napi_create_int32(env, sv[1], &b) != napi_ok ||
      napi_set_element(env, arr, 0, a) != napi_ok || napi_set_element(env, arr, 1, b) != napi_ok) {
    close(sv[0]);
    close(sv[1]);
    return napi_failure(env);
  }
  return arr;
}

// unixDatagramSend(path, buf): one datagram to a Unix datagram socket, as
// sd_notify does. A leading '@' names an abstract socket (systemd's
// NOTIFY_SOCKET may be one). Returns bytes sent.
static napi_value js_unix_datagram_send(napi_env env, napi_callback_info info) {
  ARGS(2);
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  size_t n;
  bool too_long;
  if (!arg_cstring(env, argv[0], "path", sa.sun_path, sizeof sa.sun_path, &n, &too_long)) return NULL;
  if (n == 0) return throw_errno(env, "sendto", ENOENT);
  if (too_long) return throw_errno(env, "sendto", ENAMETOOLONG);
  sa.sun_family = AF_UNIX;
  socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  if (sa.sun_path[0] == '@') sa.sun_path[0] = '\0';  // abstract: no terminating NUL counted
  else salen += 1;
  bool is_ta = false;
  NAPI_OK(env, napi_is_typedarray(env, argv[1], &is_ta));
  if (!is_ta) return throw_type(env, "%s must be a Uint8Array", "buf");
  size_t len;
  void *data;
  napi_typedarray_type type;
  NAPI_OK(env, napi_get_typedarray_info(env, argv[1], &type, &len, &data, NULL, NULL));
  if (type != napi_uint8_array) return throw_type(env, "%s must be a Uint8Array", "buf");
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  ssize_t sent;
  do sent = sendto(fd, data, len, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
  while (sent < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (sent < 0) return throw_errno(env, "sendto", err);
  return make_int(env, sent);
}

static void close_all(const int *fds, size_t n) {
  for (size_t i = 0; i < n; i++) close(fds[i]);
}

typedef union {
  struct cmsghdr align;
  char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
} fd_cmsg_buf;

static napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  ARGS(5);
  int fd;
  uint8_t *base;
  size_t length;
  bool is_array = false;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  // length 0 is refused: a 0 return must keep meaning EOF.
  if (!arg_byte_window(env, argv[1], argv[2], argv[3], false, &base, &length)) return NULL;
  NAPI_OK(env, napi_is_array(env, argv[4], &is_array));
  if (!is_array) return throw_type(env, "%s must be an array", "fds");

  fd_cmsg_buf cbuf;
  struct iovec iov = {.iov_base = base, .iov_len = length};
  struct msghdr msg = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf, .msg_controllen = sizeof cbuf.buf};
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_int(env, -1);
    return throw_errno(env, "recvmsg", errno);
  }

  // Collect every fd the kernel installed before judging the message, so that
  // nothing leaks whichever way we fail.
  int fds[MAX_FDS];
  size_t nfds = 0;
  bool unexpected = false;
  int bad_level = 0, bad_type = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char *p = CMSG_DATA(c);
      for (size_t i = 0; i < count; i++) {
        int rfd;
        memcpy(&rfd, p + i * sizeof(int), sizeof rfd);  // CMSG_DATA may be unaligned
        if (nfds < MAX_FDS)
          fds[nfds++] = rfd;
        else
          close(rfd);  // cannot happen with our buffer size, but never leak
      }
    } else if (!unexpected) {
      unexpected = true;
      bad_level = c->cmsg_level;
      bad_type = c->cmsg_type;
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    close_all(fds, nfds);
    return throw_coded(env, "recvmsg",
                       "recvmsg: control data truncated (peer sent more than 32 fds)", "ECTRUNC",
                       EMSGSIZE);
  }
  if (unexpected) {
    close_all(fds, nfds);
    char message[128];
    snprintf(message, sizeof message, "recvmsg: unexpected control message (level %d, type %d)",
             bad_level, bad_type);
    return throw_coded(env, "recvmsg", message, "EPROTO", EPROTO);
  }

  uint32_t at;
  size_t pushed = 0;
  napi_status st = napi_get_array_length(env, argv[4], &at);
  for (; st == napi_ok && pushed < nfds; pushed++) {
    napi_value v;
    st = napi_create_int32(env, fds[pushed], &v);
    if (st == napi_ok) st = napi_set_element(env, argv[4], at + (uint32_t)pushed, v);
  }
  if (st != napi_ok) {
    // fds already in the array belong to the caller now; the rest are ours to drop.
    close_all(fds + pushed, nfds - pushed);
    return napi_failure(env);
  }
  return make_int(env, n);
}

static napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  ARGS(5);
  int fd;
  uint8_t *base;
  size_t length;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_byte_window(env, argv[1], argv[2], argv[3], true, &base, &length)) return NULL;

  int fds[MAX_FDS];
  uint32_t nfds = 0;
  napi_valuetype t;
  NAPI_OK(env, napi_typeof(env, argv[4], &t));
  if (t != napi_null && t != napi_undefined) {
    bool is_array = false;
    NAPI_OK(env, napi_is_array(env, argv[4], &is_array));
    if (!is_array) return throw_type(env, "%s must be an array or null", "fds");
    NAPI_OK(env, napi_get_array_length(env, argv[4], &nfds));
    if (nfds > MAX_FDS) return throw_range(env, "fds: at most 32 file descriptors per message");
    for (uint32_t i = 0; i < nfds; i++) {
      napi_value v;
      NAPI_OK(env, napi_get_element(env, argv[4], i, &v));
      if (!arg_int32(env, v, "fds[i]", 0, INT32_MAX, &fds[i])) return NULL;
    }
    // Ancillary data rides on the payload; with no bytes the fds would be dropped.
    if (nfds > 0 && length == 0) return throw_range(env, "length must be >= 1 when sending fds");
  }

  fd_cmsg_buf cbuf;
  struct iovec iov = {.iov_base = base, .iov_len = length};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    memset(&cbuf, 0, sizeof cbuf);
    msg.msg_control = cbuf.buf;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  }
  // On a partial send the fds went with the first byte; the caller sends the
  // rest without them. MSG_NOSIGNAL: a vanished peer must be EPIPE, not SIGPIPE.
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_int(env, -1);
    return throw_errno(env, "sendmsg", errno);
  }
  return make_int(env, n);
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  // Linux releases the fd even when close() fails (EINTR/EIO), so retrying
  // could close someone else's fd; only EBADF points at a caller bug.
  if (close(fd) < 0 && errno == EBADF) return throw_errno(env, "close", EBADF);
  return make_undefined(env);
}

// ---------------------------------------------------------------------------
// Memory

static napi_value js_mmap(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  double length, offset;
  bool writable;
  napi_valuetype t;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_integer(env, argv[1], "length", 1, TWO_POW_53, &length)) return NULL;
  if (!arg_integer(env, argv[2], "offset", 0, TWO_POW_53, &offset)) return NULL;
  NAPI_OK(env, napi_typeof(env, argv[3], &t));
  if (t != napi_boolean) return throw_type(env, "%s must be a boolean", "writable");
  NAPI_OK(env, napi_get_value_bool(env, argv[3], &writable));

  void *p = mmap(NULL, (size_t)length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd,
                 (off_t)offset);
  if (p == MAP_FAILED) return throw_errno(env, "mmap", errno);
  napi_value r;
  if (napi_create_double(env, (double)(uintptr_t)p, &r) != napi_ok) {
    munmap(p, (size_t)length);
    return napi_failure(env);
  }
  return r;
}

static napi_value js_munmap(napi_env env, napi_callback_info info) {
  ARGS(2);
  double address, length;
  if (!arg_integer(env, argv[0], "address", 1, TWO_POW_53, &address)) return NULL;
  if (!arg_integer(env, argv[1], "length", 1, TWO_POW_53, &length)) return NULL;
  if (munmap((void *)(uintptr_t)address, (size_t)length) < 0)
    return throw_errno(env, "munmap", errno);
  return make_undefined(env);
}

static void noop_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  (void)hint;
}

static napi_value js_array_buffer(napi_env env, napi_callback_info info) {
  ARGS(2);
  double address, length;
  if (!arg_integer(env, argv[0], "address", 1, TWO_POW_53, &address)) return NULL;
  // 2^32 is Node 20's buffer.constants.MAX_LENGTH; bigger regions get several views.
  if (!arg_integer(env, argv[1], "length", 1, TWO_POW_32, &length)) return NULL;
  // The mapping is owned by whoever called mmap(); the buffer only borrows it,
  // hence a finalizer that does nothing (and detach() before munmap()).
  napi_value ab;
  NAPI_OK(env, napi_create_external_arraybuffer(env, (void *)(uintptr_t)address, (size_t)length,
                                                noop_finalize, NULL, &ab));
  return ab;
}

static napi_value js_detach(napi_env env, napi_callback_info info) {
  ARGS(1);
  bool is_ab = false;
  NAPI_OK(env, napi_is_arraybuffer(env, argv[0], &is_ab));
  if (!is_ab) return throw_type(env, "%s must be an ArrayBuffer", "buffer");
  if (napi_detach_arraybuffer(env, argv[0]) != napi_ok)
    return throw_type(env, "%s is not detachable", "buffer");
  return make_undefined(env);
}

static napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  ARGS(1);
  // The kernel caps memfd names at 249 bytes plus NUL.
  char name[250];
  size_t n;
  bool too_long;
  if (!arg_cstring(env, argv[0], "name", name, sizeof name, &n, &too_long)) return NULL;
  if (too_long) return throw_errno(env, "memfd_create", EINVAL);
  // Sealing lets the owner promise a fixed size to a peer that maps the fd.
  int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return throw_errno(env, "memfd_create", errno);
  return make_int(env, fd);
}

// ---------------------------------------------------------------------------
// eventfd

static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  ARGS(1);
  double initval;
  if (!arg_integer(env, argv[0], "initval", 0, UINT32_MAX, &initval)) return NULL;
  int fd = eventfd((unsigned int)initval, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return throw_errno(env, "eventfd", errno);
  return make_int(env, fd);
}

// A one-shot CLOCK_MONOTONIC timer as an fd (for delays below libuv's
// millisecond timers): readable once it expired; watchEventfd resets it.
static napi_value js_timerfd(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (fd < 0) return throw_errno(env, "timerfd_create", errno);
  return make_int(env, fd);
}

static napi_value js_timerfd_arm(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  double ns;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  // Up to ~1 hour; 0 disarms.
  if (!arg_integer(env, argv[1], "ns", 0, 3.6e12, &ns)) return NULL;
  struct itimerspec its = {0};
  its.it_value.tv_sec = (time_t)(ns / 1e9);
  its.it_value.tv_nsec = (long)(ns - (double)its.it_value.tv_sec * 1e9);
  if (timerfd_settime(fd, 0, &its, NULL) < 0) return throw_errno(env, "timerfd_settime", errno);
  return make_undefined(env);
}

static napi_value js_eventfd_read(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  uint64_t value;
  ssize_t n;
  do n = read(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) value = 0;
  else if (n < 0) return throw_errno(env, "read", errno);
  else if (n != sizeof value) return throw_errno(env, "read", EINVAL);  // not an eventfd
  napi_value r;
  // Counters beyond 2^53 lose precision; only the "was signalled" bit matters in practice.
  NAPI_OK(env, napi_create_double(env, (double)value, &r));
  return r;
}

static napi_value js_eventfd_write(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  double d;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_integer(env, argv[1], "value", 0, TWO_POW_53, &d)) return NULL;
  uint64_t value = (uint64_t)d;
  ssize_t n;
  do n = write(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return throw_errno(env, "write", errno);
  if (n >= 0 && n != sizeof value) return throw_errno(env, "write", EINVAL);
  return make_undefined(env);
}

// ---------------------------------------------------------------------------
// Per-env state

typedef struct {
  napi_ref watcher_ctor;  // class whose prototype carries stop()
} addon_state;

static void addon_state_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  addon_state *st = data;
  if (st->watcher_ctor) napi_delete_reference(env, st->watcher_ctor);
  free(st);
}

// ---------------------------------------------------------------------------
// Readiness watchers
//
// Ownership: the struct is shared by the uv handle (until its close callback)
// and the JS wrapper (until its finalizer); whichever lets go last frees it.
// While the watcher is active the wrapper is pinned by a strong reference, so
// dropping the Watcher object does not silently stop callbacks — the uv
// handle also keeps the loop alive, like a net.Server would.
// All Node-API resources are released from the close callback, never while the
// JS callback may still be on the stack (stop() is often called from inside it).

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_ref self;  // strong while active
  napi_async_context async_ctx;  // watch(); watchEventfd calls back plainly
  napi_async_cleanup_hook_handle hook;
  int fd;
  int owners;
  bool stopped;
  bool env_gone;       // close callback may only free memory
  bool reset_eventfd;  // read the eventfd before calling back (watchEventfd)
} watcher;

static void watcher_release(watcher *w) {
  if (--w->owners == 0) free(w);
}

static void watcher_closed(uv_handle_t *h) {
  watcher *w = container_of(h, watcher, poll);
  if (!w->env_gone) {
    if (w->callback) napi_delete_reference(w->env, w->callback);
    if (w->async_ctx) napi_async_destroy(w->env, w->async_ctx);
  }
  w->callback = NULL;
  w->async_ctx = NULL;
  // Unregisters the hook, or, during teardown, tells Node this watcher is done.
  if (w->hook) napi_remove_async_cleanup_hook(w->hook);
  w->hook = NULL;
  watcher_release(w);
}

static void watcher_stop(watcher *w) {
  if (w->stopped) return;
  w->stopped = true;
  uv_close((uv_handle_t *)&w->poll, watcher_closed);
  if (w->self && !w->env_gone) napi_delete_reference(w->env, w->self);
  w->self = NULL;
}

static void watcher_on_poll(uv_poll_t *h, int status, int events) {
  watcher *w = container_of(h, watcher, poll);
  // A stop() from an earlier callback in this same loop iteration wins.
  if (w->stopped) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  int result = status < 0 ? status : events;
  if (w->reset_eventfd && status >= 0) {
    // Reset the counter here, saving JS a call per wakeup; a later write wakes us again.
    uint64_t value;
    ssize_t n;
    do n = read(w->fd, &value, sizeof value);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) result = -errno;
    else if (n >= 0 && n != sizeof value) result = -EINVAL;  // not an eventfd
  }
  napi_value fn, self, arg;
  if (napi_get_reference_value(env, w->callback, &fn) == napi_ok && fn != NULL &&
      napi_get_reference_value(env, w->self, &self) == napi_ok && self != NULL &&
      napi_create_int32(env, result, &arg) == napi_ok) {
    // Kicks and coalescing timers (watchEventfd) are the data plane's wakeups.
    if (w->reset_eventfd) call_js_plain(env, self, fn, 1, &arg);
    else invoke_js(env, w->async_ctx, self, fn, 1, &arg);
  }
  napi_close_handle_scope(env, scope);
}

// Teardown with the watcher still running: close the handle; watcher_closed
// completes the hook once libuv has let go of it.
static void watcher_teardown(napi_async_cleanup_hook_handle handle, void *arg) {
  (void)handle;
  watcher_stop(arg);
}

static void watcher_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  watcher *w = data;
  // Active watchers are pinned and teardown stops them first, so this is only
  // a backstop; the env is going away, so the close callback must not use it.
  if (!w->stopped) {
    watcher_stop(w);
    w->env_gone = true;
  }
  watcher_release(w);
}

static void watcher_free_handle(uv_handle_t *h) {
  free(container_of(h, watcher, poll));
}

static napi_value js_watcher_ctor(napi_env env, napi_callback_info info) {
  napi_value self;
  NAPI_OK(env, napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  return self;
}

static napi_value js_watcher_stop(napi_env env, napi_callback_info info) {
  napi_value self;
  void *w;
  NAPI_OK(env, napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  if (!unwrap_tagged(env, self, &WATCHER_TAG, "Watcher", &w)) return NULL;
  watcher_stop(w);
  return make_undefined(env);
}

static napi_value watch_start(napi_env env, int32_t fd, int32_t events, napi_value callback, bool reset_eventfd);

static napi_value js_watch(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd, events;
  if (!arg_int32(env, argv[0], "fd", 0, INT32_MAX, &fd)) return NULL;
  if (!arg_int32(env, argv[1], "events", 1, WATCH_EVENT_MASK, &events)) return NULL;
  if (!arg_function(env, argv[2], "callback")) return NULL;
  return watch_start(env, fd, events, argv[2], false);
}

static napi_value js_watch_eventfd(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  if (!arg_int32(env, argv[0], "fd", 0, INT32_MAX, &fd)) return NULL;
  if (!arg_function(env, argv[1], "callback")) return NULL;
  return watch_start(env, fd, UV_READABLE, argv[1], true);
}

static napi_value watch_start(napi_env env, int32_t fd, int32_t events, napi_value callback, bool reset_eventfd) {

  addon_state *st;
  napi_value ctor, obj, name;
  uv_loop_t *loop;
  NAPI_OK(env, napi_get_instance_data(env, (void **)&st));
  NAPI_OK(env, napi_get_reference_value(env, st->watcher_ctor, &ctor));
  NAPI_OK(env, napi_get_uv_event_loop(env, &loop));
  NAPI_OK(env, napi_create_string_utf8(env, "vublk:watch", NAPI_AUTO_LENGTH, &name));
  NAPI_OK(env, napi_new_instance(env, ctor, 0, NULL, &obj));

  watcher *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, "calloc", ENOMEM);
  w->env = env;
  w->fd = fd;
  w->reset_eventfd = reset_eventfd;
  // Nothing is registered with the loop when uv_poll_init fails.
  int rc = uv_poll_init(loop, &w->poll, fd);
  if (rc < 0) {
    free(w);
    return throw_errno(env, "uv_poll_init", -rc);
  }
  rc = uv_poll_start(&w->poll, events & WATCH_EVENT_MASK, watcher_on_poll);
  if (rc < 0) {
    uv_close((uv_handle_t *)&w->poll, watcher_free_handle);
    return throw_errno(env, "uv_poll_start", -rc);
  }
  if (napi_wrap(env, obj, w, watcher_finalize, NULL, NULL) != napi_ok) {
    uv_close((uv_handle_t *)&w->poll, watcher_free_handle);
    return napi_failure(env);
  }
  w->owners = 2;  // uv handle + wrapper
  if (napi_type_tag_object(env, obj, &WATCHER_TAG) != napi_ok ||
      napi_create_reference(env, callback, 1, &w->callback) != napi_ok ||
      napi_create_reference(env, obj, 1, &w->self) != napi_ok ||
      (!reset_eventfd && napi_async_init(env, NULL, name, &w->async_ctx) != napi_ok) ||
      napi_add_async_cleanup_hook(env, watcher_teardown, w, &w->hook) != napi_ok) {
    watcher_stop(w);
    return napi_failure(env);
  }
  return obj;
}

// ---------------------------------------------------------------------------
// I/O engine
//
// Fixed slots, each with its own iovec array, so the hot path never allocates.
// Each in-flight request holds an owner count on the engine and the wrapper is
// pinned while anything is in flight, so completions are delivered even if JS
// drops the handle. At env teardown the async cleanup hook waits for the last
// request to land (the pool thread may still be writing into its slot).

#include <linux/fs.h>  // BLKDISCARD, BLKZEROOUT
#include <sys/ioctl.h>

// Range operations (src/native/io-ops.ts). Shared with uring.c, which runs the
// two ioctls through vublk_range_op on the pool as well (io_uring has no
// portable opcode for them).

// Blocking; runs on a pool thread. Returns 0 or -errno.
int64_t vublk_range_op(int op, int fd, uint64_t offset, uint64_t length) {
  int rc;
  if (op == IO_PUNCH_HOLE || op == IO_ZERO_RANGE) {
    // KEEP_SIZE: a discard or write-zeroes must never change the disk size.
    int mode = FALLOC_FL_KEEP_SIZE | (op == IO_PUNCH_HOLE ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
    do rc = fallocate(fd, mode, (off_t)offset, (off_t)length);
    while (rc < 0 && errno == EINTR);
  } else {
    uint64_t range[2] = {offset, length};
    unsigned long req = op == IO_BLKDISCARD ? BLKDISCARD : BLKZEROOUT;
    do rc = ioctl(fd, req, range);
    while (rc < 0 && errno == EINTR);
  }
  return rc < 0 ? -errno : 0;
}

typedef struct io_engine io_engine;

typedef struct {
  uv_work_t req;
  io_engine *engine;
  struct iovec *iov;
  uint32_t index;
  int op;
  int fd;
  int iovcnt;
  off_t offset;
  uint64_t length;  // range operations only
  int64_t result;
  bool busy;
} io_slot;

struct io_engine {
  napi_env env;
  uv_loop_t *loop;
  napi_ref callback;
  napi_ref self;  // weak, made strong while requests are in flight
  napi_async_context async_ctx;
  napi_async_cleanup_hook_handle hook;
  io_slot *slots;
  struct iovec *iov_pool;
  uint32_t nslots;
  uint32_t max_iov;
  uint32_t in_flight;
  int owners;
  bool pinned;
  bool released;      // destroyed or torn down: no more submissions or callbacks
  bool tearing_down;  // env is going away: finish quietly, never call JS
  bool env_gone;
};

static void engine_unref(io_engine *e) {
  if (--e->owners == 0) {
    free(e->slots);
    free(e->iov_pool);
    free(e);
  }
}

// Gives back everything but the struct itself; only with nothing in flight.
static void engine_release(io_engine *e) {
  if (e->released) return;
  e->released = true;
  if (!e->env_gone) {
    if (e->callback) napi_delete_reference(e->env, e->callback);
    if (e->self) napi_delete_reference(e->env, e->self);
    if (e->async_ctx) napi_async_destroy(e->env, e->async_ctx);
  }
  e->callback = NULL;
  e->self = NULL;
  e->async_ctx = NULL;
  e->pinned = false;
  if (e->hook) napi_remove_async_cleanup_hook(e->hook);
  e->hook = NULL;
  free(e->slots);
  free(e->iov_pool);
  e->slots = NULL;
  e->iov_pool = NULL;
}

// One request, synchronously: what a pool thread runs, and what the inline
// engine runs on the iothread itself. May modify `iov` (short transfers).
static int64_t io_run(int op, int fd, off_t off, uint64_t length, struct iovec *iov, int cnt) {
  ssize_t n;
  if (op >= IO_PUNCH_HOLE) return vublk_range_op(op, fd, (uint64_t)off, length);
  if (op == IO_FLUSH) {
    do n = fdatasync(fd);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : 0;
  }
  int64_t done = 0;
  // Leading empty iovecs would make a 0 return look like EOF.
  while (cnt > 0 && iov->iov_len == 0) iov++, cnt--;
  // At least one call even for an empty request, so a bad fd is still reported.
  do {
    n = op == IO_READ ? preadv(fd, iov, cnt, off) : pwritev(fd, iov, cnt, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0 && cnt > 0) {
      // Reads: end of file, report what we have. Writes: the kernel made no
      // progress and would not next time either; do not spin.
      if (op == IO_WRITE) done = -EIO;
      break;
    }
    done += n;
    off += n;
    // Short transfer: advance past whole iovecs, then into the partial one.
    while (cnt > 0 && (size_t)n >= iov->iov_len) {
      n -= (ssize_t)iov->iov_len;
      iov++, cnt--;
    }
    if (cnt > 0) {
      iov->iov_base = (char *)iov->iov_base + n;
      iov->iov_len -= (size_t)n;
    }
  } while (cnt > 0);
  return done;
}

// Runs on a pool thread: touches only its own slot.
static void io_work(uv_work_t *req) {
  io_slot *s = container_of(req, io_slot, req);
  s->result = io_run(s->op, s->fd, s->offset, s->length, s->iov, s->iovcnt);
}

static void io_after(uv_work_t *req, int status) {
  io_slot *s = container_of(req, io_slot, req);
  io_engine *e = s->engine;
  uint32_t index = s->index;
  int64_t result = status == UV_ECANCELED ? -ECANCELED : s->result;
  // Free the slot before the callback so it can be resubmitted from there.
  s->busy = false;
  e->in_flight--;

  if (e->tearing_down) {
    if (e->in_flight == 0) engine_release(e);  // completes the cleanup hook
    engine_unref(e);
    return;
  }

  napi_env env = e->env;
  napi_handle_scope scope;
  if (!e->released && napi_open_handle_scope(env, &scope) == napi_ok) {
    napi_value fn, self, argv[2];
    if (napi_get_reference_value(env, e->callback, &fn) == napi_ok && fn != NULL &&
        napi_get_reference_value(env, e->self, &self) == napi_ok && self != NULL &&
        napi_create_uint32(env, index, &argv[0]) == napi_ok &&
        napi_create_int64(env, result, &argv[1]) == napi_ok)
      invoke_js(env, e->async_ctx, self, fn, 2, argv);
    napi_close_handle_scope(env, scope);
  }
  // The callback may have resubmitted (still pinned) or destroyed the engine
  // (self already gone); the request's owner count keeps `e` valid here.
  if (e->in_flight == 0 && e->pinned && e->self) {
    e->pinned = false;
    napi_reference_unref(env, e->self, NULL);
  }
  engine_unref(e);
}

static void engine_teardown(napi_async_cleanup_hook_handle handle, void *arg) {
  (void)handle;
  io_engine *e = arg;
  e->tearing_down = true;
  if (e->in_flight == 0) engine_release(e);
}

static void engine_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  io_engine *e = data;
  if (e->in_flight == 0) {
    engine_release(e);
  } else {
    // Backstop only (in-flight engines are pinned): let the last completion
    // free the memory without touching the dying env.
    e->tearing_down = true;
    e->env_gone = true;
  }
  engine_unref(e);
}

static napi_value js_io_engine_create(napi_env env, napi_callback_info info) {
  ARGS(3);
  double nslots, max_iov;
  if (!arg_integer(env, argv[0], "slots", 1, MAX_SLOTS, &nslots)) return NULL;
  if (!arg_integer(env, argv[1], "maxIov", 1, MAX_IOV, &max_iov)) return NULL;
  if (!arg_function(env, argv[2], "onComplete")) return NULL;

  uv_loop_t *loop;
  napi_value obj, name;
  NAPI_OK(env, napi_get_uv_event_loop(env, &loop));
  NAPI_OK(env, napi_create_string_utf8(env, "vublk:io", NAPI_AUTO_LENGTH, &name));
  NAPI_OK(env, napi_create_object(env, &obj));

  io_engine *e = calloc(1, sizeof *e);
  if (e) {
    e->slots = calloc((size_t)nslots, sizeof *e->slots);
    e->iov_pool = calloc((size_t)nslots * (size_t)max_iov, sizeof *e->iov_pool);
  }
  if (!e || !e->slots || !e->iov_pool) {
    if (e) {
      free(e->slots);
      free(e->iov_pool);
    }
    free(e);
    return throw_errno(env, "calloc", ENOMEM);
  }
  e->env = env;
  e->loop = loop;
  e->nslots = (uint32_t)nslots;
  e->max_iov = (uint32_t)max_iov;
  for (uint32_t i = 0; i < e->nslots; i++) {
    e->slots[i].engine = e;
    e->slots[i].index = i;
    e->slots[i].iov = e->iov_pool + (size_t)i * e->max_iov;
  }
  if (napi_wrap(env, obj, e, engine_finalize, NULL, NULL) != napi_ok) {
    free(e->slots);
    free(e->iov_pool);
    free(e);
    return napi_failure(env);
  }
  e->owners = 1;  // the wrapper
  if (napi_type_tag_object(env, obj, &ENGINE_TAG) != napi_ok ||
      napi_create_reference(env, argv[2], 1, &e->callback) != napi_ok ||
      napi_create_reference(env, obj, 0, &e->self) != napi_ok ||
      napi_async_init(env, NULL, name, &e->async_ctx) != napi_ok ||
      napi_add_async_cleanup_hook(env, engine_teardown, e, &e->hook) != napi_ok) {
    engine_release(e);
    return napi_failure(env);
  }
  return obj;
}

static napi_value engine_destroyed(napi_env env, const char *fn) {
  char message[96];
  snprintf(message, sizeof message, "%s: engine has been destroyed", fn);
  napi_throw_error(env, "ERR_INVALID_STATE", message);
  return NULL;
}

// Common head of both submit calls: the engine, a free slot and the fd.
static io_slot *engine_slot_arg(napi_env env, napi_value *argv, const char *fn, int op_min,
                                int op_max, io_engine **ep, int *op, int *fd) {
  io_engine *e;
  double slot_d, op_d;
  if (!unwrap_tagged(env, argv[0], &ENGINE_TAG, "IoEngineHandle", (void **)&e)) return NULL;
  if (e->released) return (engine_destroyed(env, fn), NULL);
  if (!arg_integer(env, argv[1], "slot", 0, e->nslots - 1, &slot_d)) return NULL;
  if (!arg_integer(env, argv[2], "op", op_min, op_max, &op_d)) return NULL;
  if (!arg_fd(env, argv[3], fd)) return NULL;
  io_slot *s = &e->slots[(uint32_t)slot_d];
  if (s->busy) {
    char message[96];
    snprintf(message, sizeof message, "%s: slot %u is busy", fn, s->index);
    return (throw_coded(env, fn, message, "EBUSY", EBUSY), NULL);
  }
  *ep = e;
  *op = (int)op_d;
  return s;
}

// Hands a filled-in slot to the pool.
static napi_value engine_queue(napi_env env, io_engine *e, io_slot *s) {
  if (!e->pinned) {
    NAPI_OK(env, napi_reference_ref(env, e->self, NULL));
    e->pinned = true;
  }
  s->result = 0;
  int rc = uv_queue_work(e->loop, &s->req, io_work, io_after);
  if (rc < 0) {
    if (e->in_flight == 0) {
      e->pinned = false;
      napi_reference_unref(env, e->self, NULL);
    }
    return throw_errno(env, "uv_queue_work", -rc);
  }
  s->busy = true;
  e->in_flight++;
  e->owners++;
  return make_undefined(env);
}

static napi_value js_io_engine_submit(napi_env env, napi_callback_info info) {
  ARGS(7);
  io_engine *e;
  double offset = 0, count = 0;
  int op, fd;
  io_slot *s = engine_slot_arg(env, argv, "ioEngineSubmit", IO_READ, IO_FLUSH, &e, &op, &fd);
  if (!s) return NULL;

  uint32_t n_iov = 0;
  // Straight into the idle slot; nothing runs on it until uv_queue_work.
  if (op != IO_FLUSH && !arg_iov_request(env, argv + 4, e->max_iov, s->iov, &offset, &n_iov)) return NULL;
  count = n_iov;

  s->op = op;
  s->fd = fd;
  s->offset = (off_t)offset;
  s->iovcnt = (int)count;
  return engine_queue(env, e, s);
}

static napi_value js_io_engine_submit_range(napi_env env, napi_callback_info info) {
  ARGS(6);
  io_engine *e;
  double offset, length;
  int op, fd;
  io_slot *s =
      engine_slot_arg(env, argv, "ioEngineSubmitRange", IO_PUNCH_HOLE, IO_BLKZEROOUT, &e, &op, &fd);
  if (!s) return NULL;
  if (!arg_range(env, argv + 4, &offset, &length)) return NULL;
  s->op = op;
  s->fd = fd;
  s->offset = (off_t)offset;
  s->length = (uint64_t)length;
  s->iovcnt = 0;
  return engine_queue(env, e, s);
}

// ioRun(op, fd, offset, iov, iovCount) / ioRunRange(op, fd, offset, length):
// one request on the calling thread, returning bytes or -errno. For stores
// that never wait for a device (files in tmpfs), where handing each request
// to another thread costs more than doing it.
static __thread struct iovec sync_iov[MAX_IOV];

static napi_value js_io_run(napi_env env, napi_callback_info info) {
  ARGS(5);
  double op_d, fd_d, offset = 0;
  if (!arg_integer(env, argv[0], "op", IO_READ, IO_FLUSH, &op_d)) return NULL;
  // Any int: a bad fd is the kernel's to report (-EBADF), as for queued requests.
  if (!arg_integer(env, argv[1], "fd", INT32_MIN, INT32_MAX, &fd_d)) return NULL;
  uint32_t n_iov = 0;
  if ((int)op_d != IO_FLUSH && !arg_iov_request(env, argv + 2, MAX_IOV, sync_iov, &offset, &n_iov)) return NULL;
  napi_value out;
  NAPI_OK(env, napi_create_int64(env, io_run((int)op_d, (int)fd_d, (off_t)offset, 0, sync_iov, (int)n_iov), &out));
  return out;
}

static napi_value js_io_run_range(napi_env env, napi_callback_info info) {
  ARGS(4);
  double op_d, fd_d, offset, length;
  if (!arg_integer(env, argv[0], "op", IO_PUNCH_HOLE, IO_BLKZEROOUT, &op_d)) return NULL;
  if (!arg_integer(env, argv[1], "fd", INT32_MIN, INT32_MAX, &fd_d)) return NULL;
  if (!arg_range(env, argv + 2, &offset, &length)) return NULL;
  napi_value out;
  NAPI_OK(env, napi_create_int64(env, io_run((int)op_d, (int)fd_d, (off_t)offset, (uint64_t)length, NULL, 0), &out));
  return out;
}

static napi_value js_io_engine_in_flight(napi_env env, napi_callback_info info) {
  ARGS(1);
  io_engine *e;
  if (!unwrap_tagged(env, argv[0], &ENGINE_TAG, "IoEngineHandle", (void **)&e)) return NULL;
  return make_int(env, e->in_flight);
}

static napi_value js_io_engine_destroy(napi_env env, napi_callback_info info) {
  ARGS(1);
  io_engine *e;
  if (!unwrap_tagged(env, argv[0], &ENGINE_TAG, "IoEngineHandle", (void **)&e)) return NULL;
  if (e->in_flight > 0) {
    char message[96];
    snprintf(message, sizeof message, "ioEngineDestroy: %u requests in flight", e->in_flight);
    return throw_coded(env, "ioEngineDestroy", message, "EBUSY", EBUSY);
  }
  // Idempotent; the struct itself goes with the wrapper.
  engine_release(e);
  return make_undefined(env);
}

// ---------------------------------------------------------------------------
// Users and groups by name, through NSS (so LDAP, sssd or systemd-userdb names
// resolve as they do for chown(1)). -1 when there is no such name.

// getpw*_r/getgr*_r report "not found" as 0 with no result, or as one of these.
static bool lookup_not_found(int err) {
  return err == 0 || err == ENOENT || err == ESRCH || err == EBADF || err == EPERM;
}

static napi_value lookup_id(napi_env env, napi_callback_info info, bool group) {
  ARGS(1);
  char name[256];
  size_t n;
  bool too_long;
  if (!arg_cstring(env, argv[0], "name", name, sizeof name, &n, &too_long)) return NULL;
  if (n == 0 || too_long) return make_int(env, -1);
  const char *syscall = group ? "getgrnam_r" : "getpwnam_r";
  // The buffer holds the entry's strings; a group with many members needs more: grow on ERANGE.
  for (size_t size = 4096; size <= (1u << 24); size *= 2) {
    char *buf = malloc(size);
    if (!buf) return throw_errno(env, syscall, ENOMEM);
    int err;
    int64_t id = -1;
    if (group) {
      struct group gr, *res = NULL;
      err = getgrnam_r(name, &gr, buf, size, &res);
      if (err == 0 && res) id = res->gr_gid;
    } else {
      struct passwd pw, *res = NULL;
      err = getpwnam_r(name, &pw, buf, size, &res);
      if (err == 0 && res) id = res->pw_uid;
    }
    free(buf);
    if (err == ERANGE) continue;
    if (id >= 0 || lookup_not_found(err)) return make_int(env, id);
    return throw_errno(env, syscall, err);
  }
  return throw_errno(env, syscall, ERANGE);
}

static napi_value js_user_id(napi_env env, napi_callback_info info) { return lookup_id(env, info, false); }
static napi_value js_group_id(napi_env env, napi_callback_info info) { return lookup_id(env, info, true); }

// ---------------------------------------------------------------------------
// Module

NAPI_MODULE_INIT() {
  addon_state *st = calloc(1, sizeof *st);
  if (!st) return throw_errno(env, "calloc", ENOMEM);
  if (napi_set_instance_data(env, st, addon_state_finalize, NULL) != napi_ok) {
    free(st);
    return napi_failure(env);
  }
  napi_property_descriptor stop = {"stop", NULL, js_watcher_stop, NULL, NULL, NULL,
                                   napi_default_method, NULL};
  napi_value ctor;
  NAPI_OK(env, napi_define_class(env, "Watcher", NAPI_AUTO_LENGTH, js_watcher_ctor, NULL, 1, &stop,
                                 &ctor));
  NAPI_OK(env, napi_create_reference(env, ctor, 1, &st->watcher_ctor));

#define FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL}
  const napi_property_descriptor fns[] = {
      FN("unixListen", js_unix_listen),
      FN("unixBind", js_unix_bind),
      FN("listen", js_listen),
      FN("unixConnect", js_unix_connect),
      FN("accept", js_accept),
      FN("socketpair", js_socketpair),
      FN("unixDatagramSend", js_unix_datagram_send),
      FN("recvmsg", js_recvmsg),
      FN("sendmsg", js_sendmsg),
      FN("close", js_close),
      FN("mmap", js_mmap),
      FN("munmap", js_munmap),
      FN("arrayBuffer", js_array_buffer),
      FN("detach", js_detach),
      FN("memfdCreate", js_memfd_create),
      FN("eventfd", js_eventfd),
      FN("eventfdRead", js_eventfd_read),
      FN("timerfd", js_timerfd),
      FN("timerfdArm", js_timerfd_arm),
      FN("eventfdWrite", js_eventfd_write),
      FN("watch", js_watch),
      FN("watchEventfd", js_watch_eventfd),
      FN("ioEngineCreate", js_io_engine_create),
      FN("ioEngineSubmit", js_io_engine_submit),
      FN("ioEngineSubmitRange", js_io_engine_submit_range),
      FN("ioRun", js_io_run),
      FN("ioRunRange", js_io_run_range),
      FN("ioEngineInFlight", js_io_engine_in_flight),
      FN("ioEngineDestroy", js_io_engine_destroy),
      FN("userId", js_user_id),
      FN("groupId", js_group_id),
  };
#undef FN
  NAPI_OK(env, napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns));
  NAPI_OK(env, vublk_register_thread(env, exports));
  NAPI_OK(env, vublk_register_uring(env, exports));
  NAPI_OK(env, vublk_register_blkdev(env, exports));
  return exports;
}
