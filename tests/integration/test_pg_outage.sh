#!/usr/bin/env bash
# test_pg_outage.sh -- (e) PostgreSQL stops for 20 s in the middle of a ~40 s stream and
# starts again: the collector never exits, reports not-ready meanwhile, and the database ends
# with exactly the simulator's counts.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

EV='SELECT count(*) FROM needletrace.events'
nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1
pid=$(nt_collector_pid c1)

# 4,000 messages of 5 events at 100 messages/s: about 40 s
nt_simulate_bg "$NT_TMP/sim.json" --clinics 2 --devices 5 --events 20000 --events-per-message 5 \
    --rate 100 --seed 505
nt_wait_for "first events committed" 120 nt_sql_gt 0 "$EV"
before=$(nt_sql "$EV")
t_down=$(nt_now_ms)
nt_stop_pg fast
nt_log "PostgreSQL stopped with $before events committed; keeping it down for 20 s"

# shellcheck disable=SC2317 # invoked through nt_wait_for
not_ready() {
    local code
    nt_pid_alive "$pid" || {
        echo "the collector exited"
        return 1
    }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
        "http://127.0.0.1:${NT_CHTTP[c1]}/readyz") || true
    echo "readyz HTTP $code"
    [[ $code =~ ^[45][0-9][0-9]$ ]]
}
nt_wait_for "readyz to report not ready while the database is down" 15 not_ready
nt_log "readyz reports not ready: ${NT_LAST:-}"
left=$((20 - ($(nt_now_ms) - t_down) / 1000))
nt_hold "collector pid $pid alive while the database is down" "$left" nt_pid_alive "$pid"
nt_expect_true "simulate still publishing when PostgreSQL comes back (outage was mid-stream)" \
    nt_pid_alive "$NT_SIM_PID"
nt_start_pg
nt_log "PostgreSQL back after $((($(nt_now_ms) - t_down) / 1000)) s; collector pid $pid alive: $(nt_pid_alive "$pid" && echo yes || echo no)"

nt_wait_simulate "$NT_TMP/sim.json" 300
nt_wait_counts "$NT_TMP/sim.json" -- 300
nt_expect_true "the collector (pid $pid) never exited" nt_pid_alive "$pid"
nt_expect_eq "collector pid unchanged" "$pid" "$(nt_collector_pid c1)"
nt_wait_for "readyz 200 again" 60 nt_http c1 /readyz
nt_check_no_duplicate_keys
nt_check_breakdown "events per clinic" .expected.events_by_clinic clinic_id events "$NT_TMP/sim.json"
nt_finish
