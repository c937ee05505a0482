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
# come out right.
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

fn_mean() { # FUNCTION CALLS0 TOTAL0: calls since, and their mean ms
    nt_sql "SELECT (sum(calls) - $2) || ' ' ||
                   round(((sum(total_time) - $3) / greatest(sum(calls) - $2, 1))::numeric, 2)
              FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = '$1'"
}
fn_now() { # FUNCTION: calls and total ms so far
    nt_sql "SELECT coalesce(sum(calls), 0) || ' ' || coalesce(sum(total_time), 0)
              FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = '$1'"
}

# shellcheck source=../integration/lib/pub.sh
source "$NT_LIB_DIR/pub.sh"
nt_find_python paho.mqtt.client
PY=$NT_PY
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
expected=0
for n in $SIZES; do
    # the previous phase's holes, alerted: this phase runs with its own n open holes only
    if (($(nt_count sequence_holes) > 0)); then
        read -r c0 t0 <<<"$(fn_now check_sequence_gaps)"
        nt_sql "UPDATE needletrace.settings SET value = '1 second' WHERE key = 'sequence_gap_after'"
        nt_wait_for "the previous phase's holes alerted" 300 nt_sql_eq 0 \
            "SELECT count(*) FROM needletrace.sequence_holes"
        nt_wait_for "every boot settled" 120 nt_sql_eq 0 \
            "SELECT count(*) FROM needletrace.boot_progress WHERE settled_seq < max_seq"
        read -r dc dmean <<<"$(fn_mean check_sequence_gaps "$c0" "$t0")"
        report+=("  gap checks that alerted the previous phase's holes: $dc calls, mean $dmean ms")
        nt_sql "UPDATE needletrace.settings SET value = '10 minutes' WHERE key = 'sequence_gap_after'"
    fi
    prefix="l$n"
    nt_log "phase: $n lossy pens"
    "$PY" "$ROOT/tests/integration/lib/lossy_pens.py" --port "$NT_BROKER_PORT" --prefix "$prefix" \
        --pens "$n" --before "$BEFORE" --missing 2 --phase first >"$NT_TMP/$prefix-first.json" ||
        nt_fail "lossy_pens.py --phase first failed"
    expected=$((expected + $(jq -r '.lossy_events' "$NT_TMP/$prefix-first.json")))
    nt_wait_for "$expected events committed" 600 \
        nt_sql_eq "$expected" "SELECT count(*) FROM needletrace.events"
    nt_sql "CHECKPOINT" >/dev/null
    # measured: the healthy pen while the lossy pens keep sending, their holes open
    read -r c0 t0 <<<"$(fn_now check_sequence_gaps)"
    read -r e0 et0 <<<"$(fn_now evaluate_rules)"
    "$PY" "$ROOT/tests/integration/lib/lossy_pens.py" --port "$NT_BROKER_PORT" --prefix "$prefix" \
        --pens "$n" --before "$BEFORE" --missing 2 --trickle 5 --seconds "$SECONDS_H" \
        --healthy-rate 20 --phase "then" >"$NT_TMP/$prefix.json" || nt_fail "lossy_pens.py failed"
    expected=$((expected + $(jq -r '.lossy_events + .healthy_events' "$NT_TMP/$prefix.json")))
    nt_wait_for "$expected events committed" 600 \
        nt_sql_eq "$expected" "SELECT count(*) FROM needletrace.events"
    # at least two checks with this phase's holes open
    read -r c1 _ <<<"$(fn_now check_sequence_gaps)"
    nt_wait_for "two more gap checks" 60 nt_sql_ge "$((c1 + 2))" \
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
          WHERE schemaname = 'needletrace' AND funcname = 'check_sequence_gaps'"
    holes=$(nt_count sequence_holes)
    ((holes == n)) || nt_fail "expected $n open holes, found $holes"
    read -r p50 p99 <<<"$(nt_sql "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1)
                                         || ' ' ||
                                         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
                                    FROM (SELECT 1000 * extract(epoch FROM
                                                     pg_xact_commit_timestamp(xmin) - device_time) AS ms
                                            FROM needletrace.events
                                           WHERE device_serial = '$prefix-HP') l")"
    read -r gc gmean <<<"$(fn_mean check_sequence_gaps "$c0" "$t0")"
    read -r ec emean <<<"$(fn_mean evaluate_rules "$e0" "$et0")"
    report+=("$(printf '%6d lossy pens (%d open holes): healthy pen publish->commit p50 %s ms, p99 %s ms; gap check %s ms/call (%s calls); evaluate_rules %s ms/call (%s calls)' \
        "$n" "$holes" "$p50" "$p99" "$gmean" "$gc" "$emean" "$ec")")
done
# the last phase's holes, due at once
read -r c0 t0 <<<"$(fn_now check_sequence_gaps)"
nt_sql "UPDATE needletrace.settings SET value = '1 second' WHERE key = 'sequence_gap_after'"
nt_wait_for "the last phase's holes alerted" 300 nt_sql_eq 0 \
    "SELECT count(*) FROM needletrace.sequence_holes"
read -r dc dmean <<<"$(fn_mean check_sequence_gaps "$c0" "$t0")"
report+=("  gap checks that alerted the last phase's holes: $dc calls, mean $dmean ms")
gaps=$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE rule = 'SEQUENCE_GAP'")
report+=("  SEQUENCE_GAP alerts: $gaps (one per lossy pen)")

echo
echo "needletrace lossy-pen benchmark ($(nproc) CPUs, lossy pens send seqs 1..$BEFORE but 2, then 5 more during ${SECONDS_H}s of healthy traffic at 20 msg/s)"
printf '%s\n' "${report[@]}"
nt_finish
