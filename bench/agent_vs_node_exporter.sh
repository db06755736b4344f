#!/usr/bin/env bash
# The agent's cost next to node_exporter's, side by side on this machine.
#
# Both run for DURATION seconds (default 300) at a 1 s interval: a local Prometheus scrapes
# node_exporter every second and receives the agent's remote-write; the agent also scrapes an
# application endpoint of 1,000 series every second. Prints each one's peak RSS (VmHWM) and CPU
# seconds (user + system), and the ratios agent / node_exporter. Goal: at most 1/3 on both.
#
#   bench/agent_vs_node_exporter.sh            # 5 minutes
#   DURATION=60 bench/agent_vs_node_exporter.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-300}
for b in prometheus prometheus-node-exporter python3; do
  command -v "$b" >/dev/null || { echo "bench: $b is missing (apt-get install prometheus prometheus-node-exporter)" >&2; exit 1; }
done
cargo build --release -q -p vigil-agent
AGENT=target/release/vigil-agent

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
APP=$(port); NE=$(port); PROM=$(port); SELF=$(port)

# An application endpoint with 1,000 series.
mkdir -p "$work/app"
python3 - "$work/app/metrics" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("# TYPE app_requests_total counter\n")
    for i in range(1000):
        f.write(f'app_requests_total{{route="/r{i % 50}",code="{200 + i % 5}",shard="{i // 250}",n="{i}"}} {i * 7}\n')
PY
python3 -m http.server --bind 127.0.0.1 "$APP" --directory "$work/app" >/dev/null 2>&1 & pids+=($!)

prometheus-node-exporter --web.listen-address="127.0.0.1:$NE" >"$work/ne.log" 2>&1 & NE_PID=$!; pids+=($NE_PID)

cat >"$work/prometheus.yml" <<YML
global: { scrape_interval: 1s, scrape_timeout: 1s }
scrape_configs:
  - job_name: node
    static_configs: [{ targets: ["127.0.0.1:$NE"] }]
YML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$PROM" --web.enable-remote-write-receiver >"$work/prom.log" 2>&1 & pids+=($!)

cat >"$work/agent.toml" <<TOML
[agent]
interval = "1s"
[identity]
source = "static"
instance = "bench"
[[scrape]]
url = "http://127.0.0.1:$APP/metrics"
[push]
url = "http://127.0.0.1:$PROM/api/v1/write"
[buffer]
dir = "$work/spool"
[listen]
address = "127.0.0.1:$SELF"
TOML
"$AGENT" --config "$work/agent.toml" >"$work/agent.log" 2>&1 & AGENT_PID=$!; pids+=($AGENT_PID)

echo "bench: running for ${DURATION}s (agent pid $AGENT_PID, node_exporter pid $NE_PID)" >&2
sleep "$DURATION"

hz=$(getconf CLK_TCK)
stats() { # pid -> "rss_kib cpu_seconds"
  local hwm ticks
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$1/status")
  ticks=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat")
  echo "$hwm $(awk -v t="$ticks" -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }')"
}
read -r a_rss a_cpu < <(stats "$AGENT_PID")
read -r n_rss n_cpu < <(stats "$NE_PID")
pushed=$(curl -s "http://127.0.0.1:$PROM/api/v1/query?query=count(app_requests_total%7Binstance%3D%22bench%22%7D)" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)')

printf '%-16s %12s %12s\n' "" "RSS (VmHWM)" "CPU seconds"
printf '%-16s %9s KiB %12s\n' "vigil-agent" "$a_rss" "$a_cpu"
printf '%-16s %9s KiB %12s\n' "node_exporter" "$n_rss" "$n_cpu"
awk -v ar="$a_rss" -v nr="$n_rss" -v ac="$a_cpu" -v nc="$n_cpu" 'BEGIN {
  printf "ratio agent/node_exporter: RSS %.2f, CPU %.2f (goal: at most 0.33 on both)\n", ar / nr, (nc > 0 ? ac / nc : 0) }'
echo "app series the agent delivered to Prometheus: $pushed of 1000; duration ${DURATION}s"
