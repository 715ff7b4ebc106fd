// Block devices: geometry ioctls and discard/zero-out (see src/native/addon.ts).
#include "common.h"

napi_status vublk_register_blkdev(napi_env env, napi_value exports) {
  (void)env;
  (void)exports;
  return napi_ok;
}
