// io_uring I/O engine (see src/native/addon.ts for the JS contract).
#include "common.h"

napi_status vublk_register_uring(napi_env env, napi_value exports) {
  (void)env;
  (void)exports;
  return napi_ok;
}
