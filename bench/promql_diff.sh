#!/usr/bin/env bash
# The differential PromQL test at length: CASES random well-typed queries (default 10,000) from
# SEED (default 1) over the compliance data set, each a range query on Debian's Prometheus 2.42
# and the aggregator with the same samples, compared as the compliance tester compares (series
# by labels, values within a relative 1e-5). Prints the agreement count; a difference is either
# a change Prometheus made since 2.42 that Vigil follows (checked by asking 2.42 the same
# question with the new meaning, and named) or a failure, listed. The compliance suite's score
# is printed first (the same run loads the data once).
#
#   bench/promql_diff.sh
#   CASES=3000 SEED=7 bench/promql_diff.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v prometheus >/dev/null || { echo "bench: prometheus is missing (apt-get install prometheus)" >&2; exit 1; }
PROMQL_DIFF_CASES=${CASES:-10000} PROMQL_DIFF_SEED=${SEED:-1} \
  cargo test -q -p vigil-e2e --test compliance
