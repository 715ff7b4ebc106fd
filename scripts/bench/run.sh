#!/usr/bin/env bash
# Entry of `make bench`: a 1 GiB image in tmpfs (page-cached, so storage is not
# the bottleneck), then the driver (src/bench/frontend-bench.ts), which runs
# every configuration and writes docs/benchmarks.md and docs/benchmarks.json.
# Extra arguments go to the driver, e.g. --duration 5 --rounds 1 --configs vublk-uring-1t.
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${BENCH_IMAGE:-/dev/shm/vublk-bench-$$.img}
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon not found (make deps)" >&2; exit 1; }
[[ -f dist/src/bench/frontend-bench.js ]] || { echo "not built: run make build" >&2; exit 1; }

if [[ -z ${BENCH_IMAGE:-} ]]; then
  trap 'rm -f "$image"' EXIT
  # Real zero-filled pages rather than a sparse file: reads copy from the page cache.
  dd if=/dev/zero of="$image" bs=1M count=1024 status=none
fi

# The command recorded in the report (make bench sets BENCH_COMMAND).
cmd=${BENCH_COMMAND:-scripts/bench/run.sh${*:+ $*}}
node dist/src/bench/frontend-bench.js --image "$image" --command "$cmd" "$@"
