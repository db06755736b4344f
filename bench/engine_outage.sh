#!/usr/bin/env bash
# The engine down for five minutes under load (#15): an aggregator in remote mode forwarding to
# a VictoriaMetrics, and vmagent (Debian's 1.79) forwarding to another, both fed the same
# remote-write traffic (SERIES series, default 10,000, one sample each every second, rwbench),
# both engines stopped for OUTAGE seconds (default 300); half-way through, the aggregator
# and vmagent are killed (-9) too and started again (the sender paused meanwhile, so that what
# each acknowledged is exact). Then the engines come back.
#
# Prints, for each: samples acknowledged to the sender, samples the engine holds at the end
# (exact count, the engines deduplicate a resent sample), lost = acknowledged - held, the
# queue's peak on disk during the outage, and how long after the engine's return everything had
# arrived (and the ratio of the two). For the aggregator also: its rules' health during the
# outage (the engine's error) and the decisions made meanwhile (none is the right answer: a
# scaling policy with on_no_data set is evaluated every 5 s on the engine's data).
#
#   bench/engine_outage.sh
#   SERIES=20000 OUTAGE=120 bench/engine_outage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SERIES=${SERIES:-10000}
OUTAGE=${OUTAGE:-300}
for b in victoria-metrics vmagent; do
  command -v "$b" >/dev/null || { echo "bench: $b is missing (apt-get install victoria-metrics)" >&2; exit 1; }
done
cargo build --release -q -p vigil-aggregator
cargo build --release -q -p vigil-e2e --bin rwbench
work=$(mktemp -d)
pids=()
cleanup() {
  touch "$work/stop"
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "bench: $1 not ready" >&2; exit 1; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
metric() { curl -sf "$1" | awk -v m="$2" '$1 == m {print $2; f=1} END {if (!f) print 0}'; }
rows() { metric "http://127.0.0.1:$1/metrics" 'vm_rows_inserted_total{type="promremotewrite"}'; }
held() {
  curl -sf "http://127.0.0.1:$1/api/v1/query" --data-urlencode 'query=sum(count_over_time({job="node",__name__=~"bench_metric_.*"}[1d]))' \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)'
}
now_s() { date +%s.%N; }

VM1=$(port); VM2=$(port)
vm_args() { echo "-storageDataPath=$work/vm-$1 -httpListenAddr=127.0.0.1:$1 -loggerLevel=ERROR -search.disableCache -search.latencyOffset=1s -dedup.minScrapeInterval=1ms"; }
start_vm() {
  # shellcheck disable=SC2046
  victoria-metrics $(vm_args "$1") >>"$work/vm-$1.log" 2>&1 & eval "VMPID_$1=$!"; pids+=($!)
  wait_ready "http://127.0.0.1:$1/health"
}
start_vm "$VM1"; start_vm "$VM2"

AGG=$(port)
cat >"$work/rules.toml" <<'TOML'
[[group]]
name = "bench"
interval = "5s"

[[group.record]]
record = "bench:instances"
expr = 'count(bench_metric_0)'

[[scaling]]
name = "web"
asg = "web-asg"
min = 1
max = 100
expr = 'count(bench_metric_0)'
target = 50
interval = "5s"
on_no_data = 100
no_data_for = "30s"
TOML
cat >"$work/agg.toml" <<TOML
[server]
listen = "127.0.0.1:$AGG"
max_series = 5000000
[storage]
retention = "10m"
state_dir = "$work/agg-state"
backend = "remote"
[storage.remote]
query_url = "http://127.0.0.1:$VM1"
write_url = "http://127.0.0.1:$VM1/api/v1/write"
queue_max_bytes = "4GiB"
[rules]
files = ["$work/rules.toml"]
query_offset = "2s"
TOML
start_agg() {
  target/release/vigil-aggregator --config "$work/agg.toml" >>"$work/agg.log" 2>&1 & AGG_PID=$!; pids+=($AGG_PID)
  wait_ready "http://127.0.0.1:$AGG/-/ready"
}
VMA=$(port)
start_vmagent() {
  vmagent -httpListenAddr="127.0.0.1:$VMA" -remoteWrite.url="http://127.0.0.1:$VM2/api/v1/write" \
    -remoteWrite.tmpDataPath="$work/vmagent" -remoteWrite.maxDiskUsagePerURL=4GB -loggerLevel=ERROR \
    >>"$work/vmagent.log" 2>&1 & VMA_PID=$!; pids+=($VMA_PID)
  wait_ready "http://127.0.0.1:$VMA/health"
}
start_agg; start_vmagent
agg_cpu=0; vma_cpu=0   # CPU of processes already gone (the killed ones)

# One round a second, the same timestamp to both; "acknowledged" counts the samples of each
# request answered 2xx (rwbench prints "total seconds failed_requests"; 2,000 series a request).
# Pauses while $work/pause exists, saying so with $work/paused.
sender() {
  local n=0
  while [ ! -e "$work/stop" ]; do
    if [ -e "$work/pause" ]; then touch "$work/paused"; sleep 0.05; continue; fi
    rm -f "$work/paused"
    local t; t=$(date +%s%3N)
    for target in "agg http://127.0.0.1:$AGG/api/v1/write" "vma http://127.0.0.1:$VMA/api/v1/write"; do
      set -- $target
      read -r total _ failed < <(target/release/rwbench "$2" "$SERIES" 1 2000 2 "$t" 2>/dev/null || echo "$SERIES 0 $((SERIES / 2000))")
      echo $((total - failed * 2000)) >>"$work/acked-$1"
    done
    n=$((n + 1)); echo "$n" >"$work/rounds"
    # The next whole second.
    sleep "$(python3 -c 'import time; print(max(0.0, 1 - time.time() % 1))')"
  done
}
sender & pids+=($!)
acked() { awk '{s += $1} END {print s + 0}' "$work/acked-$1"; }
pending() { metric "http://127.0.0.1:$AGG/metrics" vigil_aggregator_remote_write_pending_bytes; }
# Decisions made since the aggregator started (its vigil_aggregator_decisions_total, all kinds).
decisions() { curl -sf "http://127.0.0.1:$AGG/metrics" | awk '/^vigil_aggregator_decisions_total/ {s += $2} END {print s + 0}'; }
failures() { curl -sf "http://127.0.0.1:$AGG/metrics" | awk '/^vigil_aggregator_rule_evaluation_failures_total/ {s += $2} END {print s + 0}'; }
rule_error() { curl -sf "http://127.0.0.1:$AGG/api/v1/rules" | python3 -c 'import json,sys
g=json.load(sys.stdin)["data"]["groups"]
print(next((r["lastError"] for x in g for r in x["rules"] if r.get("lastError")), ""))'; }

echo "bench: warming up 30 s ($SERIES series a second to each)" >&2
sleep 30
dec0=$(decisions); fail0=$(failures)
echo "bench: engines stopped for ${OUTAGE}s" >&2
# Stopped, not killed: VictoriaMetrics 1.79 loses the rows it acknowledged in its last seconds
# on a kill -9 (seen here: ten seconds of rows, from the aggregator and from vmagent alike), which
# no forwarder can make up for.
eval "kill -TERM \$VMPID_$VM1 \$VMPID_$VM2"
eval "while kill -0 \$VMPID_$VM1 2>/dev/null || kill -0 \$VMPID_$VM2 2>/dev/null; do sleep 0.1; done"
outage_start=$(now_s)
peak_agg=0; peak_vma=0; errors_seen=""
watch_until() {   # samples queue peaks and rule health until $1 (epoch seconds)
  while awk -v n="$(now_s)" -v e="$1" 'BEGIN { exit !(n < e) }'; do
    p=$(pending 2>/dev/null || echo 0); [ "${p%.*}" -gt "$peak_agg" ] 2>/dev/null && peak_agg=${p%.*}
    q=$(du -sb "$work/vmagent" 2>/dev/null | cut -f1); [ "${q:-0}" -gt "$peak_vma" ] && peak_vma=$q
    [ -z "$errors_seen" ] && errors_seen=$(rule_error 2>/dev/null || true)
    sleep 1
  done
}
half=$(awk -v s="$outage_start" -v o="$OUTAGE" 'BEGIN { printf "%.3f", s + o / 2 }')
watch_until "$half"
echo "bench: kill -9 of the aggregator and vmagent, half-way through" >&2
touch "$work/pause"; while [ ! -e "$work/paused" ]; do sleep 0.05; done
dec1=$(decisions); fail1=$(failures)
agg_cpu=$(cpu "$AGG_PID"); vma_cpu=$(cpu "$VMA_PID")
kill -9 "$AGG_PID" "$VMA_PID"; wait "$AGG_PID" "$VMA_PID" 2>/dev/null || true
start_agg; start_vmagent
dec2=$(decisions); fail2=$(failures)
rm -f "$work/pause"
watch_until "$(awk -v s="$outage_start" -v o="$OUTAGE" 'BEGIN { printf "%.3f", s + o }')"
dec3=$(decisions); fail3=$(failures)
err_end=$(rule_error || true)
touch "$work/stop"; while [ -e "$work/paused" ] || ! [ -e "$work/rounds" ]; do sleep 0.1; done
sleep 1.5   # the sender's last round (it checks $work/stop between rounds)
a_acked=$(acked agg); v_acked=$(acked vma)
echo "bench: engines back; load stopped after $(cat "$work/rounds") rounds" >&2
back=$(now_s)
start_vm "$VM1"; start_vm "$VM2"
# Seconds from the engines' return until each holds what it acknowledged; a side whose count
# has not moved for 30 s has delivered all it will (vmagent loses what a kill -9 caught in its
# memory).
a_drain=""; v_drain=""; a_last=-1; v_last=-1; still=0
for _ in $(seq 1 3000); do
  t=$(awk -v b="$back" -v n="$(now_s)" 'BEGIN { printf "%.1f", n - b }')
  a_now=$(held "$VM1" 2>/dev/null || echo 0); v_now=$(held "$VM2" 2>/dev/null || echo 0)
  [ -z "$a_drain" ] && [ "$a_now" -ge "$a_acked" ] && a_drain=$t
  [ -z "$v_drain" ] && [ "$v_now" -ge "$v_acked" ] && v_drain=$t
  [ -n "$a_drain" ] && [ -n "$v_drain" ] && break
  if [ "$a_now" = "$a_last" ] && [ "$v_now" = "$v_last" ]; then still=$((still + 1)); else still=0; fi
  a_last=$a_now; v_last=$v_now
  [ "$still" -ge 30 ] && break
  sleep 1
done
a_drain=${a_drain:-never}; v_drain=${v_drain:-never}
a_held=$(held "$VM1"); v_held=$(held "$VM2")
agg_cpu=$(awk -v a="$agg_cpu" -v b="$(cpu "$AGG_PID")" -v hz="$tick" 'BEGIN { printf "%.1f", (a + b) / hz }')
vma_cpu=$(awk -v a="$vma_cpu" -v b="$(cpu "$VMA_PID")" -v hz="$tick" 'BEGIN { printf "%.1f", (a + b) / hz }')
dec_after=$(decisions)

printf '%-18s %13s %13s %8s %16s %22s %8s\n' "" acknowledged held lost "queue peak (MB)" "all in after return (s)" "cpu s"
printf '%-18s %13d %13d %8d %16.1f %22s %8s\n' vigil-aggregator "$a_acked" "$a_held" $((a_acked - a_held)) "$(awk -v b="$peak_agg" 'BEGIN{print b/1e6}')" "$a_drain" "$agg_cpu"
printf '%-18s %13d %13d %8d %16.1f %22s %8s\n' "vmagent 1.79" "$v_acked" "$v_held" $((v_acked - v_held)) "$(awk -v b="$peak_vma" 'BEGIN{print b/1e6}')" "$v_drain" "$vma_cpu"
awk -v a="$a_drain" -v v="$v_drain" 'BEGIN { if (a + 0 > 0 && v + 0 > 0) printf "ratio aggregator/vmagent: time to deliver the backlog %.2fx\n", a / v }'
echo "(engines down ${OUTAGE}s under ${SERIES} samples/s to each; aggregator and vmagent kill -9'd half-way; queue peak: the aggregator's pending bytes of log, vmagent's queue directory)"
echo "aggregator rules during the outage: $((fail1 - fail0 + fail3 - fail2)) evaluations failed, e.g. ${errors_seen:-(no error seen)}"
echo "aggregator decisions made while the engine was down: $((dec1 - dec0 + dec3 - dec2)) ($dec0 before it; $dec_after since the restart, once the engine was back)"
[ "$a_acked" -eq "$a_held" ] || { echo "bench: the aggregator lost $((a_acked - a_held)) acknowledged samples" >&2; exit 1; }
