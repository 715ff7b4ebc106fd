// Error reporting, argument validation and the JS callback path shared by all modules.
#include "common.h"

// ---------------------------------------------------------------------------
// Errors

static const struct {
  int no;
  const char *name;
} errno_names[] = {
    {EPERM, "EPERM"},       {ENOENT, "ENOENT"},         {ESRCH, "ESRCH"},
    {EINTR, "EINTR"},       {EIO, "EIO"},               {ENXIO, "ENXIO"},
    {E2BIG, "E2BIG"},       {EBADF, "EBADF"},           {EAGAIN, "EAGAIN"},
    {ENOMEM, "ENOMEM"},     {EACCES, "EACCES"},         {EFAULT, "EFAULT"},
    {EBUSY, "EBUSY"},       {EEXIST, "EEXIST"},         {ENODEV, "ENODEV"},
    {ENOTDIR, "ENOTDIR"},   {EISDIR, "EISDIR"},         {EINVAL, "EINVAL"},
    {ENFILE, "ENFILE"},     {EMFILE, "EMFILE"},         {EFBIG, "EFBIG"},
    {ENOSPC, "ENOSPC"},     {ESPIPE, "ESPIPE"},         {EROFS, "EROFS"},
    {EPIPE, "EPIPE"},       {ERANGE, "ERANGE"},         {ENAMETOOLONG, "ENAMETOOLONG"},
    {ENOSYS, "ENOSYS"},     {ELOOP, "ELOOP"},           {EOVERFLOW, "EOVERFLOW"},
    {EPROTO, "EPROTO"},     {ENOTSOCK, "ENOTSOCK"},     {EMSGSIZE, "EMSGSIZE"},
    {EPROTOTYPE, "EPROTOTYPE"}, {EOPNOTSUPP, "EOPNOTSUPP"}, {EAFNOSUPPORT, "EAFNOSUPPORT"},
    {EADDRINUSE, "EADDRINUSE"}, {EADDRNOTAVAIL, "EADDRNOTAVAIL"}, {ENETDOWN, "ENETDOWN"},
    {ECONNABORTED, "ECONNABORTED"}, {ECONNRESET, "ECONNRESET"}, {ENOBUFS, "ENOBUFS"},
    {EISCONN, "EISCONN"},   {ENOTCONN, "ENOTCONN"},     {ETIMEDOUT, "ETIMEDOUT"},
    {ECONNREFUSED, "ECONNREFUSED"}, {EALREADY, "EALREADY"}, {EINPROGRESS, "EINPROGRESS"},
    {ECANCELED, "ECANCELED"}, {EDQUOT, "EDQUOT"},
};

const char *errno_name(int err, char *buf, size_t len) {
  for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
    if (errno_names[i].no == err) return errno_names[i].name;
  snprintf(buf, len, "E%d", err);
  return buf;
}

// Error with Node-style `code`, `errno` and `syscall` properties.
napi_value throw_coded(napi_env env, const char *syscall, const char *message,
                              const char *code, int err) {
  napi_value msg_v, code_v, err_v, errno_v, syscall_v;
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg_v) != napi_ok ||
      napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v) != napi_ok ||
      napi_create_error(env, code_v, msg_v, &err_v) != napi_ok) {
    napi_throw_error(env, code, message);
    return NULL;
  }
  if (napi_create_int32(env, err, &errno_v) == napi_ok)
    napi_set_named_property(env, err_v, "errno", errno_v);
  if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_v) == napi_ok)
    napi_set_named_property(env, err_v, "syscall", syscall_v);
  napi_throw(env, err_v);
  return NULL;
}

napi_value throw_errno(napi_env env, const char *syscall, int err) {
  char desc_buf[128], code_buf[16], message[256];
  // GNU strerror_r: thread-safe (workers), may return a static string.
  const char *desc = strerror_r(err, desc_buf, sizeof desc_buf);
  snprintf(message, sizeof message, "%s: %s", syscall, desc);
  return throw_coded(env, syscall, message, errno_name(err, code_buf, sizeof code_buf), err);
}

napi_value throw_type(napi_env env, const char *fmt, const char *name) {
  char message[192];
  snprintf(message, sizeof message, fmt, name);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
  return NULL;
}

napi_value throw_range(napi_env env, const char *message) {
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", message);
  return NULL;
}

// A Node-API call failed. Usually a JS exception is already pending (e.g. a
// getter threw); if not, surface the engine's reason instead of failing silently.
napi_value napi_failure(napi_env env) {
  const napi_extended_error_info *info = NULL;
  const char *reason = "Node-API call failed";
  // Read the info first: napi_is_exception_pending resets it.
  if (napi_get_last_error_info(env, &info) == napi_ok && info && info->error_message)
    reason = info->error_message;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, "ERR_VUBLK_NAPI", reason);
  return NULL;
}



// ---------------------------------------------------------------------------
// Argument helpers. They throw and return false on bad input.

// An integral Number in [min, max]. Non-numbers are TypeErrors; fractions and
// out-of-range values are RangeErrors, like Node's own validateInteger().
bool arg_integer(napi_env env, napi_value v, const char *name, double min, double max,
                        double *out) {
  napi_valuetype t;
  NAPI_OK_B(env, napi_typeof(env, v, &t));
  if (t != napi_number) return (throw_type(env, "%s must be a number", name), false);
  double d;
  NAPI_OK_B(env, napi_get_value_double(env, v, &d));
  // The range check also rejects NaN; afterwards |d| <= 2^53 so the cast is exact.
  if (!(d >= min && d <= max) || (double)(int64_t)d != d) {
    char message[192];
    snprintf(message, sizeof message, "%s must be an integer in [%.0f, %.0f], got %g", name, min,
             max, d);
    return (throw_range(env, message), false);
  }
  *out = d;
  return true;
}

bool arg_int32(napi_env env, napi_value v, const char *name, int32_t min, int32_t max,
                      int32_t *out) {
  double d;
  if (!arg_integer(env, v, name, min, max, &d)) return false;
  *out = (int32_t)d;
  return true;
}

// fds are any int32: a negative or closed one is reported by the kernel as
// EBADF, which is the error callers already handle.
bool arg_fd(napi_env env, napi_value v, int *fd) {
  return arg_int32(env, v, "fd", INT32_MIN, INT32_MAX, fd);
}

bool arg_function(napi_env env, napi_value v, const char *name) {
  napi_valuetype t;
  NAPI_OK_B(env, napi_typeof(env, v, &t));
  if (t != napi_function) return (throw_type(env, "%s must be a function", name), false);
  return true;
}

// A Float64Array of at least `min_len` elements whose storage the caller keeps
// using after this call (it holds a reference; the buffer must not be transferred).
bool arg_float64_array(napi_env env, napi_value v, const char *name, size_t min_len, double **data) {
  bool is_ta = false;
  NAPI_OK_B(env, napi_is_typedarray(env, v, &is_ta));
  napi_typedarray_type type;
  size_t len = 0;
  void *p = NULL;
  if (is_ta) NAPI_OK_B(env, napi_get_typedarray_info(env, v, &type, &len, &p, NULL, NULL));
  if (!is_ta || type != napi_float64_array) return (throw_type(env, "%s must be a Float64Array", name), false);
  if (len < min_len) {
    char message[96];
    snprintf(message, sizeof message, "%s must hold at least %zu elements", name, min_len);
    return (throw_range(env, message), false);
  }
  *data = p;
  return true;
}

// Byte window [offset, offset+length) of a Uint8Array (Buffer included).
bool arg_byte_window(napi_env env, napi_value buf, napi_value off_v, napi_value len_v,
                            bool allow_empty, uint8_t **base, size_t *length) {
  bool is_ta = false;
  NAPI_OK_B(env, napi_is_typedarray(env, buf, &is_ta));
  if (!is_ta) return (throw_type(env, "%s must be a Uint8Array", "buf"), false);
  napi_typedarray_type type;
  size_t size;
  void *data;
  NAPI_OK_B(env, napi_get_typedarray_info(env, buf, &type, &size, &data, NULL, NULL));
  if (type != napi_uint8_array) return (throw_type(env, "%s must be a Uint8Array", "buf"), false);
  double off, len;
  if (!arg_integer(env, off_v, "offset", 0, (double)size, &off)) return false;
  if (!arg_integer(env, len_v, "length", allow_empty ? 0 : 1, (double)size - off, &len))
    return false;
  *base = (uint8_t *)data + (size_t)off;
  *length = (size_t)len;
  return true;
}

// Strings that go to the kernel as C strings: an embedded NUL would silently
// truncate them, so reject it.
bool arg_cstring(napi_env env, napi_value v, const char *name, char *buf, size_t bufsize,
                        size_t *len, bool *too_long) {
  napi_valuetype t;
  NAPI_OK_B(env, napi_typeof(env, v, &t));
  if (t != napi_string) return (throw_type(env, "%s must be a string", name), false);
  size_t n;
  NAPI_OK_B(env, napi_get_value_string_utf8(env, v, NULL, 0, &n));
  *too_long = n >= bufsize;
  *len = n;
  if (*too_long) return true;
  NAPI_OK_B(env, napi_get_value_string_utf8(env, v, buf, bufsize, &n));
  if (strlen(buf) != n) return (throw_type(env, "%s must not contain NUL characters", name), false);
  return true;
}

bool unwrap_tagged(napi_env env, napi_value v, const napi_type_tag *tag, const char *what,
                          void **out) {
  napi_valuetype t;
  NAPI_OK_B(env, napi_typeof(env, v, &t));
  bool ok = false;
  if (t == napi_object) NAPI_OK_B(env, napi_check_object_type_tag(env, v, tag, &ok));
  if (!ok) return (throw_type(env, "argument is not a %s", what), false);
  NAPI_OK_B(env, napi_unwrap(env, v, out));
  return true;
}

napi_value make_int(napi_env env, int64_t v) {
  napi_value r;
  NAPI_OK(env, napi_create_int64(env, v, &r));
  return r;
}

napi_value make_undefined(napi_env env) {
  napi_value r;
  NAPI_OK(env, napi_get_undefined(env, &r));
  return r;
}


// A callback into JS threw: see vublk.c's header comment for the exception policy.
static void raise_pending(napi_env env) {
  // Also reached when the env can no longer run JS (teardown); nothing to report then.
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) != napi_ok || !pending) return;
  napi_value exc;
  if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) napi_fatal_exception(env, exc);
}

// Runs fn on the env's loop inside a callback scope.
void invoke_js(napi_env env, napi_async_context ctx, napi_value recv, napi_value fn,
                      size_t argc, const napi_value *argv) {
  napi_value result;
  if (napi_make_callback(env, ctx, recv, fn, argc, argv, &result) != napi_ok) raise_pending(env);
}

void call_js_plain(napi_env env, napi_value recv, napi_value fn, size_t argc, const napi_value *argv) {
  napi_value result;
  if (napi_call_function(env, recv, fn, argc, argv, &result) != napi_ok) raise_pending(env);
}


bool arg_range(napi_env env, const napi_value *argv, double *offset, double *length) {
  return arg_integer(env, argv[0], "offset", 0, TWO_POW_53, offset) &&
         arg_integer(env, argv[1], "length", 0, TWO_POW_53, length);
}

bool arg_iov_request(napi_env env, const napi_value *argv, uint32_t max_iov, struct iovec *out,
                     double *offset, uint32_t *count) {
  if (!arg_integer(env, argv[0], "offset", 0, TWO_POW_53, offset)) return false;
  bool is_ta = false;
  napi_typedarray_type type;
  size_t len;
  void *data;
  NAPI_OK_B(env, napi_is_typedarray(env, argv[1], &is_ta));
  if (is_ta) NAPI_OK_B(env, napi_get_typedarray_info(env, argv[1], &type, &len, &data, NULL, NULL));
  if (!is_ta || type != napi_float64_array) return (throw_type(env, "%s must be a Float64Array", "iov"), false);
  double n_pairs;
  if (!arg_integer(env, argv[2], "iovCount", 0, max_iov, &n_pairs)) return false;
  if ((size_t)n_pairs * 2 > len) return (throw_range(env, "iov holds fewer than iovCount pairs"), false);
  const double *pairs = data;
  for (uint32_t i = 0; i < (uint32_t)n_pairs; i++) {
    double addr = pairs[2 * i], n = pairs[2 * i + 1];
    if (!(addr >= 0 && addr <= TWO_POW_53 && (double)(int64_t)addr == addr))
      return (throw_range(env, "iov address must be an integer in [0, 2^53]"), false);
    if (!(n >= 0 && n <= TWO_POW_53 && (double)(int64_t)n == n))
      return (throw_range(env, "iov length must be an integer in [0, 2^53]"), false);
    out[i].iov_base = (void *)(uintptr_t)addr;
    out[i].iov_len = (size_t)n;
  }
  *count = (uint32_t)n_pairs;
  return true;
}

bool set_number_property(napi_env env, napi_value obj, const char *name, double v) {
  napi_value n;
  NAPI_OK_B(env, napi_create_double(env, v, &n));
  NAPI_OK_B(env, napi_set_named_property(env, obj, name, n));
  return true;
}
