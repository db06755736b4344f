#!/usr/bin/env bash
# Fuzzing: every parser's target (vigil-fuzz, run by each crate's tests) with INPUTS inputs
# each (default 100,000), in a release build. Prints each target's counts: inputs, panics,
# hangs (an input over the time limit, 2 s), oversized allocations (one allocation over
# 64 MiB while an input runs); failing inputs are written to target/fuzz-failures/<target>/.
# Exits non-zero unless every target is clean.
#
#   bench/fuzz.sh
#   INPUTS=10000 bench/fuzz.sh       # a quicker pass
set -euo pipefail
cd "$(dirname "$0")/.."
INPUTS=${INPUTS:-100000}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
for pkg in vigil-wire vigil-rules vigil-agent vigil-aggregator; do
  VIGIL_FUZZ_INPUTS=$INPUTS cargo test --release -q -p "$pkg" fuzz_ -- --nocapture --test-threads 2 >>"$out" 2>&1 || status=1
done
# (cargo's -q progress dots may precede a line)
grep -o 'fuzz [a-z_]*: .*' "$out" | sort
targets=$(grep -o 'fuzz [a-z_]*: .*' "$out" | wc -l)
echo "$targets targets, $INPUTS inputs each"
if [ "$status" != 0 ] || [ "$targets" -lt 10 ]; then
  echo "bench/fuzz.sh: a target failed or did not run:" >&2
  grep -E 'panicked|FAILED|error' "$out" | head -40 >&2
  exit 1
fi
