// Block devices: geometry ioctls and direct-I/O alignment (see src/native/addon.ts).
// Only the kernel queries live here; which limits matter and how sysfs is read
// is decided in src/storage/target.ts.
#include "common.h"

#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

// ENOTBLK is not in common.c's table of names; give it its proper code here.
static napi_value throw_not_block(napi_env env) {
  char desc_buf[128], message[256];
  const char *desc = strerror_r(ENOTBLK, desc_buf, sizeof desc_buf);
  snprintf(message, sizeof message, "blockDeviceInfo: %s", desc);
  return throw_coded(env, "blockDeviceInfo", message, "ENOTBLK", ENOTBLK);
}

static bool set_bool(napi_env env, napi_value obj, const char *name, bool v) {
  napi_value b;
  NAPI_OK_B(env, napi_get_boolean(env, v, &b));
  NAPI_OK_B(env, napi_set_named_property(env, obj, name, b));
  return true;
}

// blockDeviceInfo(fd) -> { sizeBytes, logicalBlockSize, physicalBlockSize, minIoSize,
//   optIoSize, alignmentOffset, readOnly, rotational, major, minor }
static napi_value block_device_info(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;

  struct stat st;
  if (fstat(fd, &st) < 0) return throw_errno(env, "fstat", errno);
  if (!S_ISBLK(st.st_mode)) return throw_not_block(env);

  uint64_t size = 0;
  int logical = 0, alignment_offset = 0, ro = 0;
  unsigned int physical = 0, io_min = 0, io_opt = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) < 0) return throw_errno(env, "ioctl(BLKGETSIZE64)", errno);
  if (ioctl(fd, BLKSSZGET, &logical) < 0) return throw_errno(env, "ioctl(BLKSSZGET)", errno);
  if (ioctl(fd, BLKPBSZGET, &physical) < 0) return throw_errno(env, "ioctl(BLKPBSZGET)", errno);
  if (ioctl(fd, BLKIOMIN, &io_min) < 0) return throw_errno(env, "ioctl(BLKIOMIN)", errno);
  if (ioctl(fd, BLKIOOPT, &io_opt) < 0) return throw_errno(env, "ioctl(BLKIOOPT)", errno);
  if (ioctl(fd, BLKALIGNOFF, &alignment_offset) < 0)
    return throw_errno(env, "ioctl(BLKALIGNOFF)", errno);
  if (ioctl(fd, BLKROGET, &ro) < 0) return throw_errno(env, "ioctl(BLKROGET)", errno);
  // BLKROTATIONAL (Linux 5.3) is only a hint: an old kernel's ENOTTY means "unknown",
  // reported as rotational like the kernel's own default.
  unsigned short rotational = 1;
  if (ioctl(fd, BLKROTATIONAL, &rotational) < 0 && errno != ENOTTY)
    return throw_errno(env, "ioctl(BLKROTATIONAL)", errno);

  // A JS Number holds sizes exactly only up to 2^53 bytes (8 PiB).
  if ((double)size > TWO_POW_53) return throw_errno(env, "ioctl(BLKGETSIZE64)", EOVERFLOW);

  napi_value obj;
  NAPI_OK(env, napi_create_object(env, &obj));
  if (!set_number_property(env, obj, "sizeBytes", (double)size) ||
      !set_number_property(env, obj, "logicalBlockSize", logical) ||
      !set_number_property(env, obj, "physicalBlockSize", physical) ||
      !set_number_property(env, obj, "minIoSize", io_min) ||
      !set_number_property(env, obj, "optIoSize", io_opt) ||
      !set_number_property(env, obj, "alignmentOffset", alignment_offset) ||
      !set_bool(env, obj, "readOnly", ro != 0) ||
      !set_bool(env, obj, "rotational", rotational != 0) ||
      !set_number_property(env, obj, "major", major(st.st_rdev)) ||
      !set_number_property(env, obj, "minor", minor(st.st_rdev)))
    return NULL;
  return obj;
}

// directIoAlignment(fd) -> { memoryAlignment, offsetAlignment } | null
// statx(STATX_DIOALIGN), Linux 6.1 for files on ext4/xfs/f2fs/btrfs..., 6.11 for block
// devices. null when the kernel or filesystem does not report it; zeroes when the file
// does not support O_DIRECT at all.
static napi_value direct_io_alignment(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;

  struct statx stx;
  memset(&stx, 0, sizeof stx);
  if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_SYNC_AS_STAT, STATX_DIOALIGN, &stx) < 0) {
    // statx itself missing (kernel < 4.11 or a seccomp filter): alignment unknown.
    if (errno == ENOSYS) {
      napi_value null_v;
      NAPI_OK(env, napi_get_null(env, &null_v));
      return null_v;
    }
    return throw_errno(env, "statx", errno);
  }
  if (!(stx.stx_mask & STATX_DIOALIGN)) {
    napi_value null_v;
    NAPI_OK(env, napi_get_null(env, &null_v));
    return null_v;
  }
  napi_value obj;
  NAPI_OK(env, napi_create_object(env, &obj));
  if (!set_number_property(env, obj, "memoryAlignment", stx.stx_dio_mem_align) ||
      !set_number_property(env, obj, "offsetAlignment", stx.stx_dio_offset_align))
    return NULL;
  return obj;
}

napi_status vublk_register_blkdev(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"blockDeviceInfo", NULL, block_device_info, NULL, NULL, NULL, napi_enumerable, NULL},
      {"directIoAlignment", NULL, direct_io_alignment, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
