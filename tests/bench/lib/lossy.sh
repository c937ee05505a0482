# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # R, the figures of run.sh, is an associative array declared there
# lossy.sh -- lossy pens (issue 7, item 9), the machinery shared by tests/bench/lossy.sh (sizes 0,
# 1,000 and 10,000, one after the other) and run.sh's phase (h) (one size, phase_lossy): one
# size of lossy pens, each leaving one seq missing (its hole open: sequence_gap_after at its
# 10-minute default) and still sending, next to one healthy pen, against the running collector;
# then the cost of the gap checks that alert those holes once they fall due.
# Publisher: tests/integration/lib/lossy_pens.py, run with NT_PY (nt_find_python
# paho.mqtt.client). Results go into LOSSY_* globals (lossy.sh has no R); phase_lossy, at the
# end, is run.sh's phase and copies them into R.
# Sourced after tests/integration/lib.sh, in the database needletrace of NT_PG_PORT, with
# track_commit_timestamp on and track_functions = pl.

LOSSY_EXPECTED=0 # events the database holds once everything sent so far is committed
# Set by lossy_size: open holes, the healthy pen's publish->commit p50 and p99 (ms), the mean ms
# per call and the calls of check_sequence_gaps and of evaluate_rules during the phase.
LOSSY_HOLES="" LOSSY_P50="" LOSSY_P99="" LOSSY_GMEAN="" LOSSY_GC="" LOSSY_EMEAN="" LOSSY_EC=""
# Set by lossy_alert_holes: the calls and mean ms of the gap checks that alerted the holes.
LOSSY_DC="" LOSSY_DMEAN=""

# lossy_fn_now FUNCTION: calls and total ms so far of a needletrace PL/pgSQL function.
lossy_fn_now() {
    nt_sql "SELECT coalesce(sum(calls), 0) || ' ' || coalesce(sum(total_time), 0)
              FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = '$1'"
}

# lossy_fn_mean FUNCTION CALLS0 TOTAL0: calls since, and their mean ms.
lossy_fn_mean() {
    nt_sql "SELECT (coalesce(sum(calls), 0) - $2) || ' ' ||
                   round(((coalesce(sum(total_time), 0) - $3)
                          / greatest(coalesce(sum(calls), 0) - $2, 1))::numeric, 2)
              FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = '$1'"
}

# lossy_size N BEFORE SECONDS: N lossy pens send seqs 1..BEFORE but 2 (committed before the
# measurement starts); then, measured, the healthy pen sends 1-event messages at 20/s for
# SECONDS while each lossy pen sends 5 more events. Checks that exactly N holes are open; sets
# LOSSY_HOLES, LOSSY_P50, LOSSY_P99, LOSSY_GMEAN, LOSSY_GC, LOSSY_EMEAN, LOSSY_EC.
lossy_size() {
    local n=$1 before=$2 seconds=$3 prefix="l$1" c0 t0 e0 et0 c1
    nt_log "lossy pens: $n, each sending seqs 1..$before but 2, then the healthy pen for $seconds s"
    "$NT_PY" "$ROOT/tests/integration/lib/lossy_pens.py" --port "$NT_BROKER_PORT" --prefix "$prefix" \
        --pens "$n" --before "$before" --missing 2 --phase first >"$NT_TMP/$prefix-first.json" ||
        nt_fail "lossy_pens.py --phase first failed"
    LOSSY_EXPECTED=$((LOSSY_EXPECTED + $(jq -r '.lossy_events' "$NT_TMP/$prefix-first.json")))
    nt_wait_for "$LOSSY_EXPECTED events committed" 600 \
        nt_sql_eq "$LOSSY_EXPECTED" "SELECT count(*) FROM needletrace.events"
    nt_sql "CHECKPOINT" >/dev/null
    # measured: the healthy pen while the lossy pens keep sending, their holes open
    read -r c0 t0 <<<"$(lossy_fn_now check_sequence_gaps)"
    read -r e0 et0 <<<"$(lossy_fn_now evaluate_rules)"
    "$NT_PY" "$ROOT/tests/integration/lib/lossy_pens.py" --port "$NT_BROKER_PORT" --prefix "$prefix" \
        --pens "$n" --before "$before" --missing 2 --trickle 5 --seconds "$seconds" \
        --healthy-rate 20 --phase "then" >"$NT_TMP/$prefix.json" || nt_fail "lossy_pens.py failed"
    LOSSY_EXPECTED=$((LOSSY_EXPECTED + $(jq -r '.lossy_events + .healthy_events' "$NT_TMP/$prefix.json")))
    nt_wait_for "$LOSSY_EXPECTED events committed" 600 \
        nt_sql_eq "$LOSSY_EXPECTED" "SELECT count(*) FROM needletrace.events"
    # at least two checks with this phase's holes open
    read -r c1 _ <<<"$(lossy_fn_now check_sequence_gaps)"
    nt_wait_for "two more gap checks" 60 nt_sql_ge "$((c1 + 2))" \
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
          WHERE schemaname = 'needletrace' AND funcname = 'check_sequence_gaps'"
    LOSSY_HOLES=$(nt_count sequence_holes)
    ((LOSSY_HOLES == n)) || nt_fail "expected $n open holes, found $LOSSY_HOLES"
    read -r LOSSY_P50 LOSSY_P99 <<<"$(nt_sql "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1)
                                                     || ' ' ||
                                                     round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
                                                FROM (SELECT 1000 * extract(epoch FROM
                                                                 pg_xact_commit_timestamp(xmin) - device_time) AS ms
                                                        FROM needletrace.events
                                                       WHERE device_serial = '$prefix-HP') l")"
    read -r LOSSY_GC LOSSY_GMEAN <<<"$(lossy_fn_mean check_sequence_gaps "$c0" "$t0")"
    read -r LOSSY_EC LOSSY_EMEAN <<<"$(lossy_fn_mean evaluate_rules "$e0" "$et0")"
}

# lossy_alert_holes DESCRIPTION SETTLE: makes every open hole due at once (sequence_gap_after
# 1 s), waits until all are alerted (with SETTLE=1 also until every boot has settled, as the
# next size needs), sets LOSSY_DC and LOSSY_DMEAN, and puts sequence_gap_after back to 10 minutes.
lossy_alert_holes() {
    local desc=$1 settle=$2 c0 t0
    read -r c0 t0 <<<"$(lossy_fn_now check_sequence_gaps)"
    nt_sql "UPDATE needletrace.settings SET value = '1 second' WHERE key = 'sequence_gap_after'"
    nt_wait_for "$desc" 300 nt_sql_eq 0 "SELECT count(*) FROM needletrace.sequence_holes"
    if ((settle)); then
        nt_wait_for "every boot settled" 120 nt_sql_eq 0 \
            "SELECT count(*) FROM needletrace.boot_progress WHERE settled_seq < max_seq"
    fi
    read -r LOSSY_DC LOSSY_DMEAN <<<"$(lossy_fn_mean check_sequence_gaps "$c0" "$t0")"
    nt_sql "UPDATE needletrace.settings SET value = '10 minutes' WHERE key = 'sequence_gap_after'"
}

# lossy_line: the figures of the last lossy_size as one line of the report.
lossy_line() {
    printf '%6d lossy pens (%d open holes): healthy pen publish->commit p50 %s ms, p99 %s ms; gap check %s ms/call (%s calls); evaluate_rules %s ms/call (%s calls)\n' \
        "$1" "$LOSSY_HOLES" "$LOSSY_P50" "$LOSSY_P99" "$LOSSY_GMEAN" "$LOSSY_GC" "$LOSSY_EMEAN" "$LOSSY_EC"
}

# ---- run.sh's phase (h) ----------------------------------------------------------------------
# phase_lossy: BENCH_LOSSY_PENS lossy pens (0 skips) in a fresh database needletrace, with a
# collector of its own; the healthy pen's latency and the check costs (lossy_size), then the
# cost of the checks that alert all the holes at once. Figures in R[h_*].
phase_lossy() {
    R[h_skipped]=0
    if ((LOSSY_PENS == 0)); then
        R[h_skipped]=1
        return 0
    fi
    nt_log "(h) lossy pens: $LOSSY_PENS, fresh database"
    bench_fresh_db
    # shellcheck disable=SC2086 # COLLECTOR_ENV is a list of VAR=VALUE words
    nt_start_collector lossy $COLLECTOR_ENV
    nt_wait_collector_ready lossy 60
    LOSSY_EXPECTED=0
    lossy_size "$LOSSY_PENS" "$LOSSY_BEFORE" "$LOSSY_HEALTHY_S"
    R[h_holes]=$LOSSY_HOLES R[h_p50]=$LOSSY_P50 R[h_p99]=$LOSSY_P99
    R[h_gmean]=$LOSSY_GMEAN R[h_gc]=$LOSSY_GC R[h_emean]=$LOSSY_EMEAN R[h_ec]=$LOSSY_EC
    R[h_healthy]=$(jq -r .healthy_events "$NT_TMP/l$LOSSY_PENS.json")
    lossy_alert_holes "the lossy pens' holes alerted" 0
    R[h_dc]=$LOSSY_DC R[h_dmean]=$LOSSY_DMEAN
    R[h_gaps]=$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE rule = 'SEQUENCE_GAP'")
    bench_stop_collector lossy
}
