#!/usr/bin/env bash
# The aggregator under query load, and its PromQL latency beside Prometheus's (Debian's 2.42), on
# the same remote-written data: SERIES series (default 50,000) with one hour of samples at 10 s,
# sent to both by rwbench with the same timestamps, 3 ms past each 10 s mark (off every query's
# step grid: Vigil follows Prometheus 3.x's left-open windows, 2.42 closed ones, and the two
# agree when no sample sits on a window's edge).
#
# 1. Stall: remote-write push latency (200 fresh series every 20 ms) and /-/healthy latency for
#    PHASE seconds (default 20) with no queries, then the same while 3 clients repeat a heavy query
#    over every series. Goal: push p99 under queries at most 3x the idle p99 (or 50 ms), and
#    /-/healthy always under 1 s.
# 2. PromQL: the median of RUNS (default 10) runs of each query against both, the ratios, and
#    their geometric mean (goal <= 0.5), with the answers compared.
#
#   bench/aggregator_under_load.sh
#   SERIES=10000 PHASE=5 RUNS=3 bench/aggregator_under_load.sh     # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
SERIES=${SERIES:-50000}
PHASE=${PHASE:-20}
RUNS=${RUNS:-10}
command -v prometheus >/dev/null || { echo "bench: prometheus is missing (apt-get install prometheus)" >&2; exit 1; }
cargo build --release -q -p vigil-aggregator
cargo build --release -q -p vigil-e2e --bin rwbench --bin loadbench
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 150); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "bench: $1 not ready" >&2; exit 1; }

# The last sample 3 ms past the last whole minute; queries at that minute.
now_ms=$(date +%s%3N)
AT=$(( now_ms / 60000 * 60000 ))
END=$(( AT + 3 ))

AGG=$(port)
cat >"$work/agg.toml" <<TOML
[server]
listen = "127.0.0.1:$AGG"
max_series = 5000000
[storage]
retention = "2h"
stale_after = "2h"
state_dir = "$work/agg-state"
TOML
target/release/vigil-aggregator --config "$work/agg.toml" >"$work/agg.log" 2>&1 & pids+=($!)
PROM=$(port)
echo "global: { scrape_interval: 1h }" >"$work/prom.yml"
prometheus --config.file="$work/prom.yml" --storage.tsdb.path="$work/tsdb" --web.listen-address="127.0.0.1:$PROM" \
  --web.enable-remote-write-receiver --query.max-samples=100000000 >"$work/prom.log" 2>&1 & pids+=($!)
wait_ready "http://127.0.0.1:$AGG/-/ready"
wait_ready "http://127.0.0.1:$PROM/-/ready"

echo "bench: loading $SERIES series x 360 samples into each" >&2
target/release/rwbench "http://127.0.0.1:$AGG/api/v1/write" "$SERIES" 360 2000 2 "$END" >/dev/null
target/release/rwbench "http://127.0.0.1:$PROM/api/v1/write" "$SERIES" 360 2000 2 "$END" >/dev/null

echo "== the aggregator's push and health latency, idle and under 3 clients' heavy queries ($SERIES series)"
target/release/loadbench stall "http://127.0.0.1:$AGG" "$PHASE" 3
echo
echo "== PromQL latency, median of $RUNS runs, on the same $SERIES series"
target/release/loadbench queries "http://127.0.0.1:$AGG" "http://127.0.0.1:$PROM" "$AT" "$RUNS"
