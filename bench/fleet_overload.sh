#!/usr/bin/env bash
# A fleet past the aggregator's limits, from one load generator (tests/src/bin/fleetload.rs):
# agents on their own source addresses in 127.0.0.0/8, SERIES series each (default 1,000),
# pushing every 10 s; meanwhile one address floods 1,000 connections and holds them open a byte
# a second (slowloris), and queries of death (every sample of the window) are sent.
#
# 0. The calm twin: a fresh aggregator filled to max_series (MAX_SERIES / SERIES agents) for
#    2 x ROUNDS rounds, with no overload: what a series costs at the depth the oldest series
#    have at the end of phase 2, with the window's tables sized as they are at the limit.
# 1. Under the limit: another fresh aggregator, AGENTS_UNDER agents (default 1,500: 1.5M
#    series), ROUNDS rounds.
# 2. Past it: AGENTS agents (default 5,000: 5M series against max_series = MAX_SERIES, default
#    2,000,000), ROUNDS rounds, same process. The aggregator should keep up, answer 429 naming
#    `max_series` for the series past it, refuse the slowloris past max_connections_per_ip with a
#    429, fail the queries of death fast with 422 ([query] max_samples), and hold its memory under
#    max_series x the bytes per series the calm twin measured.
#
#   bench/fleet_overload.sh
#   AGENTS_UNDER=300 AGENTS=1000 MAX_SERIES=500000 bench/fleet_overload.sh     # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS_UNDER=${AGENTS_UNDER:-1500}
AGENTS=${AGENTS:-5000}
SERIES=${SERIES:-1000}
ROUNDS=${ROUNDS:-3}
MAX_SERIES=${MAX_SERIES:-2000000}
QOD=${QOD:-3}                                     # queries of death in phase 2
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}    # as the packages' units and images run it
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1048576}
ulimit -n "$(ulimit -Hn)"   # a socket per agent, on each side
cargo build --release -q -p vigil-aggregator
cargo build --release -q -p vigil-e2e --bin fleetload
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rss() { awk '/^VmRSS:/ {printf "%d\n", $2 * 1024}' "/proc/$pid/status"; }
metric() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
cat >"$work/agg.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
max_series = $MAX_SERIES
max_connections = 16384
[query]
max_samples = 1000000
[storage]
retention = "1h"
TOML
# A fresh aggregator with an empty window (its own state dir); sets pid.
start() {
  rm -rf "$work/state"
  printf 'state_dir = "%s"\n' "$work/state" >>"$work/agg.toml.$1"
  cat "$work/agg.toml" "$work/agg.toml.$1" >"$work/run.toml"
  target/release/vigil-aggregator --config "$work/run.toml" >"$work/agg-$1.log" 2>&1 & pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
settled() {   # index built, as a reader would, and the series gauge set by an evaluation
  curl -sf "http://127.0.0.1:$PORT/api/v1/label/job/values" >/dev/null
}

echo "== 0. the calm twin: filled to max_series, $((2 * ROUNDS)) rounds, no overload"
start calm
base0=$(rss)
target/release/fleetload "127.0.0.1:$PORT" $((MAX_SERIES / SERIES)) "$SERIES" $((2 * ROUNDS)) 0 >"$work/calm.txt"
tail -n 2 "$work/calm.txt" | head -n 1
settled
series0=$(metric vigil_aggregator_series)
rss0=$(rss)
per_series=$(( (rss0 - base0) / series0 ))
stop

start over
base=$(rss)
echo "== 1. under the limit"
target/release/fleetload "127.0.0.1:$PORT" "$AGENTS_UNDER" "$SERIES" "$ROUNDS" 0
settled
series1=$(metric vigil_aggregator_series)
rss1=$(rss)
echo "== 2. past it"
target/release/fleetload "127.0.0.1:$PORT" "$AGENTS" "$SERIES" "$ROUNDS" "$QOD"
settled
rss2=$(rss)
series2=$(metric vigil_aggregator_series)
refused=$(metric vigil_aggregator_connections_refused_total)
python3 - <<PY
base0, rss0, series0 = $base0, $rss0, $series0
base, rss1, rss2, per, maxs = $base, $rss1, $rss2, $per_series, $MAX_SERIES
threads = $(awk '/^Threads:/ {print $2}' "/proc/$pid/status")
bound = base + maxs * per
print("calm twin: %d MB at start, %d MB holding %d series %d samples deep: %d bytes per series" % (base0 / 1e6, rss0 / 1e6, series0, 2 * $ROUNDS, per))
print("overloaded: %d MB at start; %d MB holding %s series; %d MB past the limit holding %s series" % (base / 1e6, rss1 / 1e6, "$series1", rss2 / 1e6, "$series2"))
print("bound max_series x bytes per series + start: %d MB; RSS / bound = %.2f (goal <= 1)" % (bound / 1e6, rss2 / bound))
print("connections refused by max_connections_per_ip: $refused; the aggregator's threads: %d" % threads)
PY
kill -0 "$pid" && echo "the aggregator is still serving: $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/-/healthy")"
