#!/usr/bin/env bash
# The HA pair's takeover after a kill -9 of the leader, REPS times (default 10): moto_server's
# DynamoDB holds the lease, two aggregators (debug builds: the takeover is the protocol's timing,
# not CPU) push-fed as an agent with two [[push]] targets feeds them. Prints each takeover (from
# the dead holder's last renewal to the other's taking the lease, both seen at the nodes' AWS
# proxies), then min / median / max beside the bound the issue sets: 2 x lease_ttl.
#
#   bench/ha_takeover.sh                 # 10 kills at the shipped lease_ttl of 10 s
#   bench/ha_takeover.sh 3 4             # 3 kills at a 4 s lease
set -euo pipefail
cd "$(dirname "$0")/.."
command -v moto_server >/dev/null || { echo "bench: moto_server is missing (pip install -r tests/requirements.txt)" >&2; exit 1; }
cargo build -q --workspace --all-targets
exec target/debug/hatakeover "${1:-10}" "${2:-10}"
