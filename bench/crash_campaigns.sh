#!/usr/bin/env bash
# The crash campaigns of issue #14 at full length (tests/src/campaign, run by the `campaign`
# binary; the e2e suite runs each for a short while):
#
# 1. agent: kill -9 at random (lives of 1-6 s, a round a second) for AGENT_MINUTES (10), its
#    receiver going down and up at random; counted against the rounds the agent logged as
#    spooled or acknowledged: lost must be 0, corrupt spool frames 0.
# 2. aggregator: kill -9 every 30-90 s for AGGREGATOR_MINUTES (10) under LOAD series a second
#    (5,000), an alert firing and resolving and a scaling policy following a changing demand,
#    AWS (moto) behind the harness's proxy: duplicate notices, lost resolves, repeated scaling
#    calls and acknowledged samples missing from the window must all be 0.
# 3. disk: the spool and the state dir on one small full tmpfs (needs root): 503s and clear
#    errors, nothing corrupt after kill -9, recovery when space returns.
# 4. clock: the aggregator's wall clock stepped back and forward by an hour with faketime.
#
#   bench/crash_campaigns.sh
#   AGENT_MINUTES=2 AGGREGATOR_MINUTES=3 bench/crash_campaigns.sh     # a quick run
#   CAMPAIGN_SEED=123 bench/crash_campaigns.sh                        # replay the random choices
set -euo pipefail
cd "$(dirname "$0")/.."
AGENT_MINUTES=${AGENT_MINUTES:-10}
AGGREGATOR_MINUTES=${AGGREGATOR_MINUTES:-10}
export LOAD=${LOAD:-5000}
# The binaries the campaigns spawn are the debug ones the e2e suite uses (vigil_e2e::bin).
cargo build -q --workspace --all-targets
failed=0
for c in "agent $AGENT_MINUTES" "aggregator $AGGREGATOR_MINUTES" disk clock; do
  echo "== $c"
  # shellcheck disable=SC2086
  target/debug/campaign $c || failed=1
done
exit $failed
