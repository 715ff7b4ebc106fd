// Thread placement for iothreads: CPU affinity of the calling thread.
#include "common.h"

#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

// setThreadAffinity(cpus: number[]): pin the calling thread (a worker_thread
// calls it for itself) to the given CPUs. sched_setaffinity(0) acts on the
// calling thread only, which is what makes per-iothread pinning possible.
static napi_value js_set_thread_affinity(napi_env env, napi_callback_info info) {
  ARGS(1);
  bool is_array = false;
  NAPI_OK(env, napi_is_array(env, argv[0], &is_array));
  if (!is_array) return throw_type(env, "%s must be an array of CPU numbers", "cpus");
  uint32_t n;
  NAPI_OK(env, napi_get_array_length(env, argv[0], &n));
  if (n == 0) return throw_range(env, "cpus must not be empty");
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    NAPI_OK(env, napi_get_element(env, argv[0], i, &v));
    int32_t cpu;
    if (!arg_int32(env, v, "cpu", 0, CPU_SETSIZE - 1, &cpu)) return NULL;
    CPU_SET(cpu, &set);
  }
  if (sched_setaffinity(0, sizeof set, &set) < 0) return throw_errno(env, "sched_setaffinity", errno);
  return make_undefined(env);
}

// getThreadAffinity(): CPUs the calling thread may run on.
static napi_value js_get_thread_affinity(napi_env env, napi_callback_info info) {
  (void)info;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) < 0) return throw_errno(env, "sched_getaffinity", errno);
  napi_value arr;
  NAPI_OK(env, napi_create_array(env, &arr));
  uint32_t k = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (!CPU_ISSET(cpu, &set)) continue;
    NAPI_OK(env, napi_set_element(env, arr, k++, make_int(env, cpu)));
  }
  return arr;
}

// gettid(): kernel thread id of the calling thread (tests match it in /proc).
static napi_value js_gettid(napi_env env, napi_callback_info info) {
  (void)info;
  return make_int(env, (int64_t)syscall(SYS_gettid));
}

// setThreadName(name): the calling thread's name in /proc/self/task/TID/comm
// (15 characters at most), so iothreads can be told apart in top and tests.
static napi_value js_set_thread_name(napi_env env, napi_callback_info info) {
  ARGS(1);
  char name[16];
  size_t len;
  bool too_long;
  if (!arg_cstring(env, argv[0], "name", name, sizeof name, &len, &too_long)) return NULL;
  if (too_long) return throw_range(env, "thread names are at most 15 characters");
  if (prctl(PR_SET_NAME, name, 0, 0, 0) < 0) return throw_errno(env, "prctl", errno);
  return make_undefined(env);
}

napi_status vublk_register_thread(napi_env env, napi_value exports) {
  const napi_property_descriptor fns[] = {
      {"setThreadAffinity", NULL, js_set_thread_affinity, NULL, NULL, NULL, napi_enumerable, NULL},
      {"getThreadAffinity", NULL, js_get_thread_affinity, NULL, NULL, NULL, napi_enumerable, NULL},
      {"gettid", NULL, js_gettid, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setThreadName", NULL, js_set_thread_name, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);
}
