{
  "targets": [
    {
      "target_name": "vublk_native",
      "sources": ["vublk.c", "common.c", "thread.c", "uring.c", "blkdev.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_c": ["-std=gnu11"]
    }
  ]
}
