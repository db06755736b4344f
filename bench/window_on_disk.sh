#!/usr/bin/env bash
# The window kept on disk ([storage] wal): what the log costs ingest, and how long a restart
# takes to rebuild the window. Every figure is measured in this run, beside the aggregator
# without the log (wal = false, the window in memory only, as before the log existed).
#
# 1. Ingest: the same rwbench traffic (RATE_SERIES series x RATE_SAMPLES rounds, 2,000 series
#    per request over 2 connections) into three fresh aggregators: no log, the log (a write(2)
#    per request), the log with wal_fsync = true (an fsync per request). Samples/s and ratios.
# 2. Restart: REPLAY_SERIES series (default 1,000,000) x REPLAY_SAMPLES rounds ingested, then
#    - kill -9 and a restart: the whole log replayed (no checkpoint yet);
#    - SIGTERM (a checkpoint is written) and a restart: the checkpoint loaded.
#    Time from start to /-/ready, the aggregator's own replay figure, series restored, disk used.
#
#   bench/window_on_disk.sh
#   RATE_SERIES=20000 REPLAY_SERIES=100000 bench/window_on_disk.sh     # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
RATE_SERIES=${RATE_SERIES:-100000}
RATE_SAMPLES=${RATE_SAMPLES:-60}
REPLAY_SERIES=${REPLAY_SERIES:-1000000}
REPLAY_SAMPLES=${REPLAY_SAMPLES:-30}
cargo build --release -q -p vigil-aggregator
cargo build --release -q -p vigil-e2e --bin rwbench
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
PORT=$(port)
config() { # state dir, wal, fsync
  cat >"$work/agg.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
max_series = 5000000
max_series_per_request = 100000
[storage]
retention = "2h"
state_dir = "$1"
wal = $2
wal_fsync = $3
checkpoint_interval = "2h"
TOML
}
start() { # log name; sets $ready: seconds to ready
  local t0; t0=$(now)
  target/release/vigil-aggregator --config "$work/agg.toml" --log-format json >"$work/$1.log" 2>&1 & pid=$!
  for _ in $(seq 1 6000); do
    curl -sf "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1 && { ready=$(python3 -c "print($(now) - $t0)"); return 0; }
    kill -0 "$pid" 2>/dev/null || { echo "bench: aggregator exited, see below" >&2; cat "$work/$1.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "bench: aggregator not ready" >&2; exit 1
}
restored() { # log name -> "series checkpoint_series log_records replay_seconds"
  python3 - "$work/$1.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try: e = json.loads(line)
    except ValueError: continue
    f = e.get("fields", {})
    if f.get("message") == "window restored from disk":
        print(f["series"], f["checkpoint_series"], f["log_records"], "%.2f" % f["seconds"]); break
else:
    print("? ? ? ?")
PY
}
push() { target/release/rwbench "http://127.0.0.1:$PORT/api/v1/write" "$1" "$2"; }

declare -A rate
for mode in off on fsync; do
  case $mode in off) config "$work/s-$mode" false false ;; on) config "$work/s-$mode" true false ;; fsync) config "$work/s-$mode" true true ;; esac
  start "rate-$mode"
  read -r total secs failed < <(push "$RATE_SERIES" "$RATE_SAMPLES")
  [ "$failed" = 0 ] || { echo "bench: $failed requests failed ($mode)" >&2; exit 1; }
  rate[$mode]=$(python3 -c "print($total / $secs)")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done

config "$work/s-replay" true false
start replay-0
read -r rtotal rsecs rfailed < <(push "$REPLAY_SERIES" "$REPLAY_SAMPLES")
[ "$rfailed" = 0 ] || { echo "bench: $rfailed requests failed (replay load)" >&2; exit 1; }
log_bytes=$(du -sb "$work/s-replay/wal" | cut -f1)
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=
start replay-kill; kill_ready=$ready
read -r k_series k_ck k_records k_secs < <(restored replay-kill)
t0=$(now); kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
stop_secs=$(python3 -c "print($(now) - $t0)")
ck_bytes=$(du -sb "$work/s-replay/wal" | cut -f1)
start replay-term; term_ready=$ready
read -r t_series t_ck t_records t_secs < <(restored replay-term)
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

python3 - "${rate[off]}" "${rate[on]}" "${rate[fsync]}" <<PY
import sys
off, on, fs = map(float, sys.argv[1:4])
print("ingest (%d series x %d rounds, samples/s)" % ($RATE_SERIES, $RATE_SAMPLES))
print("  %-34s %12.0f" % ("no log (wal = false)", off))
print("  %-34s %12.0f   ratio to no log %.3f (goal >= 0.90)" % ("log (wal = true)", on, on / off))
print("  %-34s %12.0f   ratio to no log %.3f" % ("log + fsync per request", fs, fs / off))
print("restart with %d series x %d samples (%d samples ingested)" % ($REPLAY_SERIES, $REPLAY_SAMPLES, $rtotal))
print("  after kill -9 (whole log, %.0f MB): ready in %.1f s; replay %s s; %s series, %s log records" % ($log_bytes / 1e6, $kill_ready, "$k_secs", "$k_series", "$k_records"))
print("  SIGTERM wrote the checkpoint in %.1f s (stop to exit); checkpoint + log on disk %.0f MB" % ($stop_secs, $ck_bytes / 1e6))
print("  after SIGTERM (checkpoint): ready in %.1f s; replay %s s; %s series (%s from the checkpoint), %s log records" % ($term_ready, "$t_secs", "$t_series", "$t_ck", "$t_records"))
PY
