#!/usr/bin/env bash
# Remote-write ingest: the aggregator next to Prometheus's own receiver (Debian's 2.42), the same
# payloads sent to each on this machine: SERIES series (default 100,000) with SAMPLES samples each
# (default 360: one hour at 10 s), 2,000 series per request over 2 connections. Prints samples/s
# for each and the ratio, and the memory each holds per active series once the hour is in (RSS
# growth over the process's RSS before the load, divided by the series).
#
# Goals (aggregator issue): at least 3x Prometheus's ingest rate; at most a third of its memory per
# series.
#
#   bench/ingest_vs_prometheus.sh
#   SERIES=20000 SAMPLES=60 bench/ingest_vs_prometheus.sh     # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
SERIES=${SERIES:-100000}
SAMPLES=${SAMPLES:-360}
command -v prometheus >/dev/null || { echo "bench: prometheus is missing (apt-get install prometheus)" >&2; exit 1; }
cargo build --release -q -p vigil-aggregator
cargo build --release -q -p vigil-e2e --bin rwbench
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
wait_ready() { for _ in $(seq 1 100); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "bench: $1 not ready" >&2; exit 1; }

AGG=$(port)
cat >"$work/agg.toml" <<TOML
[server]
listen = "127.0.0.1:$AGG"
max_series = 5000000
[storage]
retention = "2h"
state_dir = "$work/agg-state"
TOML
target/release/vigil-aggregator --config "$work/agg.toml" >"$work/agg.log" 2>&1 & AGG_PID=$!; pids+=($AGG_PID)
wait_ready "http://127.0.0.1:$AGG/-/ready"
a_base=$(rss $AGG_PID)
read -r total a_secs a_failed < <(target/release/rwbench "http://127.0.0.1:$AGG/api/v1/write" "$SERIES" "$SAMPLES")
# The aggregator indexes new series at the first read after them (Prometheus does it at ingest):
# one query, so that the memory measured includes the index.
curl -sf "http://127.0.0.1:$AGG/api/v1/label/job/values" >/dev/null
sleep 2
a_rss=$(rss $AGG_PID)
kill $AGG_PID; wait $AGG_PID 2>/dev/null || true

PROM=$(port)
echo "global: { scrape_interval: 1h }" >"$work/prom.yml"
prometheus --config.file="$work/prom.yml" --storage.tsdb.path="$work/tsdb" --web.listen-address="127.0.0.1:$PROM" \
  --web.enable-remote-write-receiver >"$work/prom.log" 2>&1 & PROM_PID=$!; pids+=($PROM_PID)
wait_ready "http://127.0.0.1:$PROM/-/ready"
p_base=$(rss $PROM_PID)
read -r _ p_secs p_failed < <(target/release/rwbench "http://127.0.0.1:$PROM/api/v1/write" "$SERIES" "$SAMPLES")
sleep 2
p_rss=$(rss $PROM_PID)

awk -v n="$total" -v s="$SERIES" -v as="$a_secs" -v ps="$p_secs" -v ab="$a_base" -v ar="$a_rss" -v pb="$p_base" -v pr="$p_rss" -v af="$a_failed" -v pf="$p_failed" 'BEGIN {
  arate = n / as; prate = n / ps;
  aper = (ar - ab) * 1024 / s; pper = (pr - pb) * 1024 / s;
  printf "%-18s %14s %14s %16s\n", "", "samples/s", "failed reqs", "bytes/series";
  printf "%-18s %14.0f %14d %16.0f\n", "vigil-aggregator", arate, af, aper;
  printf "%-18s %14.0f %14d %16.0f\n", "prometheus 2.42", prate, pf, pper;
  printf "ratio aggregator/prometheus: ingest %.2fx (goal >= 3), memory per series %.2f (goal <= 0.33)\n", arate / prate, aper / pper;
  printf "(%d series x %d samples = %d samples sent to each)\n", s, n / s, n }'
