#!/usr/bin/env bash
# Entry of `make bench`: runs src/bench/main.ts, which makes the images (tmpfs
# and a disk-backed directory), runs the three layers (front-end driver, guest,
# host ceiling) for vublk and qemu-storage-daemon, and writes docs/benchmarks.md,
# docs/benchmarks.json and docs/benchmarks-iops-qd.png.
# Arguments go to the benchmark, e.g. --quick, --layers driver --storage tmpfs,
# --dry-run (prints the plan and how long it will take); --help lists them all.
set -euo pipefail
cd "$(dirname "$0")/../.."

[[ -f dist/src/bench/main.js ]] || { echo "not built: run make build" >&2; exit 1; }

# The command recorded in the report (make bench sets BENCH_COMMAND).
cmd=${BENCH_COMMAND:-scripts/bench/run.sh${*:+ $*}}
exec node dist/src/bench/main.js --command "$cmd" "$@"
