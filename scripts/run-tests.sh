#!/usr/bin/env bash
# Runs every test layer (unit, integration, guest) even if an earlier one fails,
# then prints one closing line with the totals: "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
for layer in unit integration guest; do
  echo "== $layer tests"
  npm run --silent "test:$layer" 2>&1 | tee -a "$log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
done

count() { grep -oE "^ +[0-9]+ $1" "$log" | awk '{ n += $1 } END { print n + 0 }'; }
passed=$(count passing)
failed=$(count failing)
skipped=$(count pending)
# A layer that crashed before mocha's summary still fails the run.
if [[ $status -ne 0 && $failed -eq 0 ]]; then failed=1; fi
echo
echo "$passed passed, $failed failed, $skipped skipped"
exit $status
