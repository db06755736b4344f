#!/usr/bin/env bash
# Forwarding to an engine: the aggregator in remote mode (`[storage.remote] write_url`) next to
# vmagent (Debian's 1.79), each taking the same remote-write payloads and forwarding them to a
# VictoriaMetrics single-node (one each, started the same way, empty). SERIES series (default 20,000) x SAMPLES rounds (default 60),
# 2,000 series per request over 2 connections (rwbench, the same end timestamp for both).
#
# Throughput: samples over the time from the first request sent until VictoriaMetrics has taken
# them all (its vm_rows_inserted_total{type="promremotewrite"}; the aggregator also forwards a
# few series of its own, vigil_instance_up for rwbench's 200 instances every 10 s: a few hundred
# rows, under 0.1% of the total, in its favour); then a count of the benchmark's own samples
# checks that every one arrived. CPU: the forwarder's
# user+system seconds over the same span, per million samples (ingest included for both:
# the aggregator also logs and stores what it receives, vmagent queues it). Prints both and the
# ratios.
#
#   bench/forward_vs_vmagent.sh
#   SERIES=100000 SAMPLES=120 bench/forward_vs_vmagent.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SERIES=${SERIES:-20000}
SAMPLES=${SAMPLES:-60}
for b in victoria-metrics vmagent; do
  command -v "$b" >/dev/null || { echo "bench: $b is missing (apt-get install victoria-metrics)" >&2; exit 1; }
done
cargo build --release -q -p vigil-aggregator
cargo build --release -q -p vigil-e2e --bin rwbench
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 300); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "bench: $1 not ready" >&2; exit 1; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # clock ticks, user + system
tick=$(getconf CLK_TCK)
rows() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^vm_rows_inserted_total\{type="promremotewrite"\}/ {print $2}'; }
# The benchmark's samples VictoriaMetrics holds (rwbench's series carry job="node").
held() {
  curl -sf "http://127.0.0.1:$1/api/v1/query" --data-urlencode 'query=sum(count_over_time({job="node"}[1d]))' \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)'
}
now_ns() { date +%s%N; }
total=$((SERIES * SAMPLES))
# A minute ago: VictoriaMetrics shows samples once older than its latency offset.
end_ms=$(( ($(date +%s) - 60) * 1000 ))

start_vm() {
  victoria-metrics -storageDataPath="$work/vm-$1" -httpListenAddr="127.0.0.1:$1" -loggerLevel=ERROR \
    -search.disableCache >"$work/vm-$1.log" 2>&1 & pids+=($!)
  wait_ready "http://127.0.0.1:$1/health"
}
VM=$(port); start_vm "$VM"      # the aggregator's engine
VM2=$(port); start_vm "$VM2"    # vmagent's

# Runs rwbench against $1, waits until the VictoriaMetrics on port $3 holds every sample,
# prints "seconds cpu_seconds" for the process $2.
measure() {
  local url=$1 pid=$2 vm=$3 before c0 t0 t1 c1
  before=$(rows "$vm"); before=${before:-0}
  c0=$(cpu "$pid"); t0=$(now_ns)
  target/release/rwbench "$url" "$SERIES" "$SAMPLES" 2000 2 "$end_ms" >/dev/null
  for _ in $(seq 1 6000); do
    r=$(rows "$vm"); r=${r:-0}
    awk -v r="$r" -v b="$before" -v n="$total" 'BEGIN { exit !(r - b >= n) }' && break
    sleep 0.05
  done
  t1=$(now_ns); c1=$(cpu "$pid")
  for _ in $(seq 1 600); do
    awk -v h="$(held "$vm")" -v n="$total" 'BEGIN { exit !(h >= n) }' && break
    sleep 0.2
  done
  awk -v h="$(held "$vm")" -v n="$total" 'BEGIN { exit !(h >= n) }' \
    || { echo "bench: $url: only $(held "$vm") of $total samples arrived" >&2; exit 1; }
  awk -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v hz="$tick" 'BEGIN { printf "%.3f %.3f\n", (t1 - t0) / 1e9, (c1 - c0) / hz }'
}

AGG=$(port)
cat >"$work/agg.toml" <<TOML
[server]
listen = "127.0.0.1:$AGG"
max_series = 5000000
[storage]
retention = "10m"
state_dir = "$work/agg-state"
backend = "remote"
[storage.remote]
query_url = "http://127.0.0.1:$VM"
write_url = "http://127.0.0.1:$VM/api/v1/write"
TOML
target/release/vigil-aggregator --config "$work/agg.toml" >"$work/agg.log" 2>&1 & AGG_PID=$!; pids+=($AGG_PID)
wait_ready "http://127.0.0.1:$AGG/-/ready"
read -r a_secs a_cpu < <(measure "http://127.0.0.1:$AGG/api/v1/write" $AGG_PID "$VM")
kill $AGG_PID; wait $AGG_PID 2>/dev/null || true

VMA=$(port)
vmagent -httpListenAddr="127.0.0.1:$VMA" -remoteWrite.url="http://127.0.0.1:$VM2/api/v1/write" \
  -remoteWrite.tmpDataPath="$work/vmagent" -loggerLevel=ERROR >"$work/vmagent.log" 2>&1 & VMA_PID=$!; pids+=($VMA_PID)
wait_ready "http://127.0.0.1:$VMA/health"
read -r v_secs v_cpu < <(measure "http://127.0.0.1:$VMA/api/v1/write" $VMA_PID "$VM2")

awk -v n="$total" -v as="$a_secs" -v ac="$a_cpu" -v vs="$v_secs" -v vc="$v_cpu" 'BEGIN {
  ar = n / as; vr = n / vs; ap = ac / (n / 1e6); vp = vc / (n / 1e6);
  printf "%-18s %14s %18s\n", "", "samples/s", "cpu s / M samples";
  printf "%-18s %14.0f %18.2f\n", "vigil-aggregator", ar, ap;
  printf "%-18s %14.0f %18.2f\n", "vmagent 1.79", vr, vp;
  printf "ratio aggregator/vmagent: throughput %.2fx, cpu per sample %.2fx\n", ar / vr, ap / vp;
  printf "(%d samples sent to each, forwarded to a VictoriaMetrics each)\n", n }'
