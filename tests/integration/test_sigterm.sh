#!/usr/bin/env bash
# test_sigterm.sh -- (g) SIGTERM mid-stream: the collector commits what it journaled and
# exits 0 within 10 s; restarted, it ends with exactly the simulator's counts.
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

# 4,000 messages of 5 events at 200 messages/s: about 20 s
nt_simulate_bg "$NT_TMP/sim.json" --clinics 2 --devices 10 --events 20000 --events-per-message 5 \
    --rate 200 --seed 707
nt_wait_for "2,000 events committed" 120 nt_sql_gt 2000 "$EV"
nt_stop_collector c1 TERM 20
at_exit=$(nt_sql "$EV")
nt_expect_eq "exit code after SIGTERM" 0 "$NT_EXIT_CODE"
nt_expect_true "exited within 10 s of SIGTERM (${NT_EXIT_MS} ms)" test "$NT_EXIT_MS" -le 10000
nt_expect_true "stopped mid-stream (0 < $at_exit < 20000 events committed)" \
    test "$at_exit" -gt 0 -a "$at_exit" -lt 20000
nt_expect_eq "journal/checkpoint consistent: events do not move while stopped" "$at_exit" \
    "$(nt_sql "$EV")"

nt_start_collector c1
nt_wait_collector_ready c1
nt_wait_simulate "$NT_TMP/sim.json" 300
nt_wait_counts "$NT_TMP/sim.json" -- 300
nt_check_no_duplicate_keys
nt_check_breakdown "events per clinic" .expected.events_by_clinic clinic_id events "$NT_TMP/sim.json"
nt_finish
