#!/usr/bin/env bash
# test_db_slow.sh -- a slow database (a lock held on needletrace.events by another session):
#  (a) with database.statement_timeout_ms at 1 s, the server cancels the blocked batch; the
#      collector retries in smaller batches (no message quarantined), /readyz and
#      needletrace_db_slow say the database is slow, and it never holds more than one backend;
#      once the lock is gone every message is committed exactly once and /readyz is 200 again;
#  (b) with no statement timeout and database.watchdog_ms at 2 s, the watchdog sends a cancel
#      request (PQcancel) before giving up the connection: the blocked backend stops, none is
#      left behind waiting for the lock, and again every message is committed exactly once.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

APP=needletrace-it-c1
FAST=(NEEDLETRACE_MQTT_RECONNECT_MAX_MS=1000) # retries after a timeout come quickly

nt_start_pg
nt_start_broker
nt_migrate

# backends_at_most TOTAL WAITING: the collector has at most TOTAL backends (its two connections,
# database.connections = 2), of which at most WAITING wait for a lock (prints them): none is left
# behind by a cancel or a reconnect.
# shellcheck disable=SC2317 # invoked through nt_hold
backends_at_most() {
    local n w
    n=$(nt_sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$APP'") || return 1
    w=$(nt_sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$APP'
                   AND wait_event_type = 'Lock'") || return 1
    echo "$n backends ($w waiting for a lock): $(nt_sql "SELECT string_agg(pid || ' ' || state || ' ' || coalesce(wait_event_type, '-'), ', ')
        FROM pg_stat_activity WHERE application_name = '$APP'")"
    ((n <= $1 && w <= $2))
}
# shellcheck disable=SC2317 # invoked through nt_wait_for
slow_reported() {
    local r
    r=$(nt_readyz c1) || return 1
    echo "$r; db_slow $(nt_metric db_slow)"
    [[ $r == "503 not ready: the database is slow"* && $(nt_metric db_slow) == 1 ]]
}
# hold_lock SECONDS: another session holds an exclusive lock on needletrace.events that long,
# in the background; returns once the lock is granted.
hold_lock() {
    psql -X -q -At -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -d needletrace \
        -c "BEGIN; LOCK TABLE needletrace.events IN ACCESS EXCLUSIVE MODE;
            SELECT pg_sleep($1); COMMIT;" >/dev/null 2>>"$NT_TMP/locker.log" &
    LOCKER=$!
    NT_BG_PIDS+=("$LOCKER")
    nt_wait_for "the lock on needletrace.events granted" 30 nt_sql_eq 1 \
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
          WHERE c.relname = 'events' AND l.mode = 'AccessExclusiveLock' AND l.granted"
}
# no_waiting_backend: no backend of the collector waits for a lock.
# shellcheck disable=SC2317 # invoked through nt_wait_for
no_waiting_backend() {
    nt_sql_eq 0 "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = '$APP' AND wait_event_type = 'Lock'"
}

# ---- (a) statement_timeout ---------------------------------------------------------------------
nt_start_collector c1 NEEDLETRACE_DATABASE_STATEMENT_TIMEOUT_MS=1000 "${FAST[@]}"
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim1.json" --clinics 2 --devices 4 --events 2000 --events-per-message 4 \
    --rate 500 --seed 901 --clinic-prefix slow1
nt_wait_counts "$NT_TMP/sim1.json" -- 120
hold_lock 8
t_lock=$(nt_now_ms)
nt_simulate_bg "$NT_TMP/sim2.json" --clinics 2 --devices 4 --events 4000 --events-per-message 4 \
    --rate 400 --seed 902 --clinic-prefix slow2
nt_wait_for "readyz and db_slow report the database slow" 20 slow_reported
nt_log "while locked: $NT_LAST"
nt_expect_true "statement timeouts counted ($(nt_metric db_statement_timeouts_total))" \
    test "$(nt_metric db_statement_timeouts_total)" -ge 1
left=$((7 - ($(nt_now_ms) - t_lock) / 1000))
((left > 0)) || left=1
nt_hold "the collector holds at most two backends, one waiting, while the lock is held" "$left" \
    backends_at_most 2 1
nt_wait_for "the locking session to end" 30 nt_pid_dead "$LOCKER"
nt_wait_simulate "$NT_TMP/sim2.json" 120
nt_wait_counts "$NT_TMP/sim1.json" "$NT_TMP/sim2.json" -- 120
nt_check_no_duplicate_keys
nt_wait_for "readyz 200 again" 30 nt_http c1 /readyz
nt_expect_eq "db_slow after the lock" 0 "$(nt_metric db_slow)"
nt_expect_true "the log says the batch was retried smaller" grep -q \
    "ran too long and was cancelled at step .*canceling statement due to statement timeout; retrying with at most [0-9]* messages per batch" \
    "$NT_TMP/collector-c1.log"
nt_expect_true "and that the database answers in time again" grep -q \
    "the database answers in time again" "$NT_TMP/collector-c1.log"
nt_wait_for "no backend of the collector waits for a lock" 10 no_waiting_backend
nt_stop_collector c1 TERM
nt_expect_eq "exit code" 0 "$NT_EXIT_CODE"

# ---- (b) the watchdog's cancel request -------------------------------------------------------
nt_start_collector c1 NEEDLETRACE_DATABASE_STATEMENT_TIMEOUT_MS=0 \
    NEEDLETRACE_DATABASE_WATCHDOG_MS=2000 "${FAST[@]}"
nt_wait_collector_ready c1
hold_lock 9
t_lock=$(nt_now_ms)
nt_simulate_bg "$NT_TMP/sim3.json" --clinics 2 --devices 4 --events 2000 --events-per-message 4 \
    --rate 400 --seed 903 --clinic-prefix slow3
nt_wait_for "the watchdog cancels the blocked statement" 20 \
    grep -q "no answer from the database within 2 s; cancelling its statement (backend" \
    "$NT_TMP/collector-c1.log"
nt_wait_for "readyz and db_slow report the database slow" 20 slow_reported
nt_expect_true "cancel requests counted ($(nt_metric db_cancel_requests_total))" \
    test "$(nt_metric db_cancel_requests_total)" -ge 1
left=$((8 - ($(nt_now_ms) - t_lock) / 1000))
((left > 0)) || left=1
nt_hold "the collector holds at most two backends, one waiting (none left behind)" "$left" \
    backends_at_most 2 1
nt_expect_true "the connection was kept (the cancelled statement answered)" bash -c \
    "! grep -q 'nor 5 s after a cancel request' '$NT_TMP/collector-c1.log'"
nt_wait_for "the locking session to end" 30 nt_pid_dead "$LOCKER"
nt_wait_simulate "$NT_TMP/sim3.json" 120
nt_wait_counts "$NT_TMP/sim1.json" "$NT_TMP/sim2.json" "$NT_TMP/sim3.json" -- 120
nt_check_no_duplicate_keys
nt_wait_for "readyz 200 again" 30 nt_http c1 /readyz
nt_wait_for "no backend of the collector waits for a lock" 10 no_waiting_backend
nt_finish
