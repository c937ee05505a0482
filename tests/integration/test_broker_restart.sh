#!/usr/bin/env bash
# test_broker_restart.sh -- (f) the broker (persistence on) restarts twice: once while the
# collector is offline with messages queued for its persistent session, once while the
# collector drains them. Then a second simulated phase. Exactly the sum of both phases.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

EV='SELECT count(*) FROM needletrace.events'
nt_start_pg
nt_start_broker
nt_migrate
# Create the collector's persistent session, then take the collector offline.
nt_start_collector c1
nt_wait_collector_ready c1
nt_stop_collector c1 TERM
nt_expect_eq "collector exit code after SIGTERM" 0 "$NT_EXIT_CODE"

# Phase A: 10,000 messages queued in the broker for the offline collector.
nt_simulate "$NT_TMP/simA.json" --clinics 3 --devices 10 --events 20000 --events-per-message 2 \
    --seed 601
total_a=$(nt_json "$NT_TMP/simA.json" .expected.events)
nt_restart_broker
nt_log "broker restarted with phase A queued ($total_a events); starting the collector"

nt_start_collector c1
nt_wait_for "phase A events arriving" 120 nt_sql_gt 0 "$EV"
at_restart=$(nt_sql "$EV")
nt_restart_broker
nt_log "broker restarted again with $at_restart of $total_a phase A events committed"
if ((at_restart < total_a)); then
    nt_log "the second restart hit the collector mid-drain"
else
    nt_log "note: the collector had drained phase A before the second restart"
fi
nt_wait_collector_ready c1 120

# Phase B, after the restarts, with another seed.
nt_simulate "$NT_TMP/simB.json" --clinics 3 --devices 10 --events 10000 --events-per-message 10 \
    --seed 602
nt_wait_counts "$NT_TMP/simA.json" "$NT_TMP/simB.json" -- 300
nt_log "collector metrics: $(nt_http c1 /metrics | grep -E '^needletrace_mqtt_(connects|connection_losses)_total' |
    tr '\n' ' ')"
nt_check_no_duplicate_keys
nt_check_breakdown "events per clinic (A + B)" .expected.events_by_clinic clinic_id events \
    "$NT_TMP/simA.json" "$NT_TMP/simB.json"
nt_finish
