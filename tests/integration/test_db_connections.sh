#!/usr/bin/env bash
# test_db_connections.sh -- the sink's two database connections (database.connections = 2,
# pgsink_lane.c) under fire: while a fleet publishes (with rule violations and duplicates), the
# collector's backends are terminated again and again, on either connection, at whatever step
# their batch is in. Both connections carry batches; afterwards every event, raw message and
# alert is there exactly once (the simulator's counts), the checkpoint is the journal's end, and
# the log shows connections lost and batches that followed a failed one refused, never a stall.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

APP=needletrace-it-c1
SIM="$NT_TMP/sim.json"
nt_start_pg
nt_start_broker
nt_migrate
# The reconnect backoff (database too) capped at 1 s: a connection killed again before it carried
# a batch would otherwise wait up to mqtt.reconnect_max_ms (30 s) -- longer than the waits below,
# and not what this test is about.
nt_start_collector c1 NEEDLETRACE_MQTT_RECONNECT_MAX_MS=1000
nt_wait_collector_ready c1

# backends N: the collector has N backends now.
backends() {
    nt_sql_eq "$1" "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$APP'"
}
nt_wait_for "the collector's two database connections" 30 backends 2

nt_simulate_bg "$SIM" --clinics 3 --devices 6 --events 60000 --events-per-message 3 --rate 2500 \
    --seed 611 --too-deep-rate 0.05 --reuse-rate 0.1 --expired-rate 0.05 --duplicate-rate 0.05
nt_wait_for "first events committed" 60 nt_sql_gt 0 "SELECT count(*) FROM needletrace.events"

# Both connections carry batches: two backends in a transaction at once.
both_busy() {
    nt_sql_eq 2 "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$APP'
                    AND state IN ('active', 'idle in transaction')"
}
nt_wait_for "both connections in a transaction at once" 30 both_busy

killed=0
for round in 1 2 3 4 5 6 7 8; do
    # a backend in a statement first (a COPY, a rule, a wait for the batch before it), the
    # older and the newer connection in turn
    order=ASC
    ((round % 2 == 0)) && order=DESC
    pid=$(nt_sql "SELECT pid FROM pg_stat_activity WHERE application_name = '$APP'
                   ORDER BY (state = 'active') DESC, backend_start $order LIMIT 1")
    [[ -n $pid ]] || continue
    if [[ $(nt_sql "SELECT pg_terminate_backend($pid)") == t ]]; then
        killed=$((killed + 1))
    fi
    nt_wait_for "the collector reconnects (round $round)" 30 backends 2
    before=$(nt_sql "SELECT count(*) FROM needletrace.events")
    nt_wait_for "commits go on after round $round" 30 nt_sql_gt "$before" \
        "SELECT count(*) FROM needletrace.events"
    nt_pid_alive "$NT_SIM_PID" || break
done
nt_log "terminated $killed backends of the collector"
nt_expect_true "backends terminated mid-stream ($killed)" test "$killed" -ge 3

nt_wait_simulate "$SIM" 300
nt_wait_counts "$SIM" -- 300
nt_check_no_duplicate_keys
nt_wait_alerts_settled "$(nt_json "$SIM" .expected.alerts)" 60 || true
nt_check_alerts_by_rule "alerts by rule" "$SIM"
journal_committed() {
    [[ $(nt_metric journal_checkpoint_position) == "$(nt_metric journal_end_position)" ]]
}
nt_wait_for "the checkpoint reaches the journal's end" 60 journal_committed
nt_expect_eq "checkpoint in the database = the collector's" "$(nt_metric journal_checkpoint_position)" \
    "$(nt_sql "SELECT journal_pos FROM needletrace.collector_checkpoints WHERE collector_id = 'it-c1'")"
nt_expect_true "the log names the lost connections" grep -q "terminating connection" \
    "$NT_TMP/collector-c1.log"
nt_finish
