#!/usr/bin/env bash
# test_kill9.sh -- (d) kill -9 the collector while 50,000 events are in flight, restart it:
# exactly the simulator's counts (journal replay and broker redelivery are idempotent).
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

# 5,000 messages of 10 events at 400 messages/s: about 12 s in flight
nt_simulate_bg "$NT_TMP/sim.json" --clinics 3 --devices 10 --events 50000 --events-per-message 10 \
    --rate 400 --seed 404
# kill it with a good part committed and more journaled or in flight
nt_wait_for "10,000 events committed" 120 nt_sql_gt 10000 "$EV"
nt_stop_collector c1 KILL
at_kill=$(nt_sql "$EV")
nt_log "kill -9 with $at_kill of 50000 events committed"
nt_expect_true "killed mid-stream (0 < $at_kill < 50000)" test "$at_kill" -gt 0 -a "$at_kill" -lt 50000
nt_expect_eq "exit status of the killed collector" 137 "$NT_EXIT_CODE"

nt_wait_simulate "$NT_TMP/sim.json" 300
nt_expect_eq "simulated events" 50000 "$(nt_json "$NT_TMP/sim.json" .events_generated)"

nt_start_collector c1
nt_wait_collector_ready c1
# A second kill -9 while it replays and drains the backlog, if we catch it mid-way.
nt_wait_for "events moving again after the restart" 120 nt_sql_gt "$at_kill" "$EV"
second=$(nt_sql "$EV")
if ((second < $(nt_json "$NT_TMP/sim.json" .expected.events))); then
    nt_stop_collector c1 KILL
    nt_log "second kill -9 during recovery at $second events"
    nt_start_collector c1
    nt_wait_collector_ready c1
else
    nt_log "recovery finished before a second kill could land ($second events); skipped it"
fi

nt_wait_counts "$NT_TMP/sim.json" -- 300
nt_check_no_duplicate_keys
nt_check_breakdown "events per clinic" .expected.events_by_clinic clinic_id events "$NT_TMP/sim.json"
nt_finish
