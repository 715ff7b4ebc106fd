#!/usr/bin/env bash
# Long property-based fuzzing of the hostile-guest (virtqueue, virtio-blk requests)
# and hostile-front-end (vhost-user codec) surfaces: the unit run's properties for
# FUZZ_SECONDS (default 600) from a random seed. Prints the seed, the cases and time
# per property, and for a failure the shrunk counterexample and how to replay it.
# Arguments go to the runner (test/fuzz/run.ts): --seed S, --only NAME,..., --path P.
# Expects a build (make fuzz builds first).
set -euo pipefail
cd "$(dirname "$0")/.."
exec node dist/test/fuzz/run.js --seconds "${FUZZ_SECONDS:-600}" "$@"
