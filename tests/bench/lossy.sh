#!/usr/bin/env bash
# lossy.sh -- what lossy pens cost the fleet (issue 7, item 9): a healthy pen's publish->commit
# latency p50/p99 with 0, 1,000 and 10,000 lossy pens (each leaves one seq missing, its gap not
# yet due, and keeps sending), and the cost of one sequence gap check and one evaluate_rules call
# at each size (mean per call, from pg_stat_user_functions, as the collector made them during the
# phase); then the cost of the check that alerts all of a phase's holes once they fall due.
#
# usage: tests/bench/lossy.sh [BUILD_DIR]      (default: ./build of the repository)
#
# Knobs: BENCH_LOSSY_SIZES="0 1000 10000", BENCH_LOSSY_BEFORE=50 (seqs per lossy pen before the
# phase's healthy traffic, committed before it starts; seq 2 is never sent), BENCH_LOSSY_S=15 (seconds of healthy traffic,
# 20 messages/s, while each lossy pen sends 5 more events). Publisher:
# tests/integration/lib/lossy_pens.py (python3-paho-mqtt). Before each size, the previous
# phase's holes are alerted (sequence_gap_after set to 1 s, then back to 10 minutes), so each
# phase runs with exactly its own number of open holes. Measures; asserts only that the counts
# come out right. The same measurement at one size (1,000 pens) is also a phase of run.sh; both
# use lib/lossy.sh.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" 2>/dev/null && pwd) || {
    echo "lossy: build directory not found: ${1:-$ROOT/build}" >&2
    exit 2
}
SIZES=${BENCH_LOSSY_SIZES:-0 1000 10000}
BEFORE=${BENCH_LOSSY_BEFORE:-50}
SECONDS_H=${BENCH_LOSSY_S:-15}

export NT_TEST_NAME=bench-lossy
# shellcheck source=../integration/lib.sh source-path=SCRIPTDIR/../integration
source "$ROOT/tests/integration/lib.sh"
nt_setup "$BUILD/needletrace"

# shellcheck source=lib/lossy.sh
source "$BENCH_DIR/lib/lossy.sh"
# shellcheck source=../integration/lib/pub.sh
source "$NT_LIB_DIR/pub.sh"
nt_find_python paho.mqtt.client
nt_start_pg
nt_psql postgres "ALTER SYSTEM SET track_commit_timestamp = on" >/dev/null
nt_psql postgres "ALTER SYSTEM SET shared_buffers = '256MB'" >/dev/null
nt_restart_pg fast
nt_start_broker
nt_migrate
nt_sql "ALTER DATABASE needletrace SET track_functions = 'pl'"
nt_start_collector c1
nt_wait_collector_ready c1

report=()
for n in $SIZES; do
    # the previous phase's holes, alerted: this phase runs with its own n open holes only
    if (($(nt_count sequence_holes) > 0)); then
        lossy_alert_holes "the previous phase's holes alerted" 1
        report+=("  gap checks that alerted the previous phase's holes: $LOSSY_DC calls, mean $LOSSY_DMEAN ms")
    fi
    lossy_size "$n" "$BEFORE" "$SECONDS_H"
    report+=("$(lossy_line "$n")")
done
# the last phase's holes, due at once
lossy_alert_holes "the last phase's holes alerted" 0
report+=("  gap checks that alerted the last phase's holes: $LOSSY_DC calls, mean $LOSSY_DMEAN ms")
gaps=$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE rule = 'SEQUENCE_GAP'")
report+=("  SEQUENCE_GAP alerts: $gaps (one per lossy pen)")

echo
echo "needletrace lossy-pen benchmark ($(nproc) CPUs, lossy pens send seqs 1..$BEFORE but 2, then 5 more during ${SECONDS_H}s of healthy traffic at 20 msg/s)"
printf '%s\n' "${report[@]}"
nt_finish
