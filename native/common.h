// Shared declarations of the vublk_native modules: error and argument
// helpers, the JS callback path, and each module's registration hook.
#ifndef VUBLK_NATIVE_COMMON_H
#define VUBLK_NATIVE_COMMON_H

#define _GNU_SOURCE
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif

#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FDS 32
#define MAX_IOV 1024
#define MAX_SLOTS 65536
#define TWO_POW_32 4294967296.0
#define TWO_POW_53 9007199254740992.0

// Matches addon.ts; libuv's bit values are part of its stable API.
#define WATCH_EVENT_MASK (UV_READABLE | UV_WRITABLE | UV_DISCONNECT)

// Engine operations; numbers match src/native/io-ops.ts.
enum { IO_READ = 0, IO_WRITE = 1, IO_FLUSH = 2 };
enum { IO_PUNCH_HOLE = 3, IO_ZERO_RANGE = 4, IO_BLKDISCARD = 5, IO_BLKZEROOUT = 6 };

_Static_assert(MAX_IOV <= IOV_MAX, "one preadv call must accept a whole slot");

#define container_of(ptr, type, member) \
  ((type *)((char *)(ptr) - offsetof(type, member)))


#define NAPI_OK(env, call)                          \
  do {                                              \
    if ((call) != napi_ok) return napi_failure(env); \
  } while (0)

// Like NAPI_OK for helpers that report success as bool.
#define NAPI_OK_B(env, call)                                  \
  do {                                                        \
    if ((call) != napi_ok) return (napi_failure(env), false); \
  } while (0)

#define ARGS(n)                                                   \
  size_t argc = (n);                                              \
  napi_value argv[(n) > 0 ? (n) : 1];                             \
  NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL))


// Helpers (common.c). Argument helpers throw and return false on bad input.
const char *errno_name(int err, char *buf, size_t len);
napi_value throw_coded(napi_env env, const char *syscall, const char *message, const char *code, int err);
napi_value throw_errno(napi_env env, const char *syscall, int err);
napi_value throw_type(napi_env env, const char *fmt, const char *name);
napi_value throw_range(napi_env env, const char *message);
napi_value napi_failure(napi_env env);
bool arg_integer(napi_env env, napi_value v, const char *name, double min, double max, double *out);
bool arg_int32(napi_env env, napi_value v, const char *name, int32_t min, int32_t max, int32_t *out);
bool arg_fd(napi_env env, napi_value v, int *fd);
bool arg_function(napi_env env, napi_value v, const char *name);
bool arg_float64_array(napi_env env, napi_value v, const char *name, size_t min_len, double **data);
bool arg_byte_window(napi_env env, napi_value buf, napi_value off_v, napi_value len_v, bool allow_empty, uint8_t **base, size_t *length);
bool arg_cstring(napi_env env, napi_value v, const char *name, char *buf, size_t bufsize, size_t *len, bool *too_long);
bool unwrap_tagged(napi_env env, napi_value v, const napi_type_tag *tag, const char *what, void **out);
napi_value make_int(napi_env env, int64_t v);
napi_value make_undefined(napi_env env);
// obj[name] = v (a Number); false with an exception pending on failure.
bool set_number_property(napi_env env, napi_value obj, const char *name, double v);
void invoke_js(napi_env env, napi_async_context ctx, napi_value recv, napi_value fn, size_t argc, const napi_value *argv);
// The data plane's wakeups (kick watchers, io_uring handovers): a plain call,
// without napi_make_callback's callback scope and async context, which cost a
// measurable part of each wakeup. What the callback queues (promise jobs,
// process.nextTick) runs in the same loop iteration all the same: Node closes a
// callback scope around its check phase (immediates) in every iteration, and
// that runs both queues before the loop can block again.
void call_js_plain(napi_env env, napi_value recv, napi_value fn, size_t argc, const napi_value *argv);

// A range operation run synchronously (fallocate or BLKDISCARD/BLKZEROOUT), on a
// pool thread; 0 or -errno. Shared by both engines (vublk.c).
int64_t vublk_range_op(int op, int fd, uint64_t offset, uint64_t length);

// argv[0] = offset, argv[1] = length of a range operation, integers in [0, 2^53].
// Length 0 is accepted and goes to the kernel as is (fallocate answers EINVAL).
bool arg_range(napi_env env, const napi_value *argv, double *offset, double *length);

// Arguments (offset, iov Float64Array of address/length pairs, iovCount) of an
// engine submission, written into `out` (at most max_iov entries) (common.c).
bool arg_iov_request(napi_env env, const napi_value *argv, uint32_t max_iov, struct iovec *out,
                     double *offset, uint32_t *count);

// Module registration: each defines its functions on `exports`.
napi_status vublk_register_uring(napi_env env, napi_value exports);
napi_status vublk_register_blkdev(napi_env env, napi_value exports);
napi_status vublk_register_thread(napi_env env, napi_value exports);

#endif
