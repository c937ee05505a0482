#!/usr/bin/env bash
# test_puback_durability.sh -- DESIGN §2 regression: nothing is acknowledged before it is
# durable. The fault library tests/fault/ntfault.c, preloaded from outside the process (no
# hook in the collector), SIGKILLs the collector just before its first journal write: the
# first burst of messages was received but neither journaled nor acknowledged. Restarted
# without it, the collector must end with exactly the simulator's counts, which is only
# possible if the broker redelivered the messages, i.e. they had not been PUBACKed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

EV='SELECT count(*) FROM needletrace.events'
nt_start_pg
nt_start_broker
nt_migrate
FAULT_LIB=$(dirname "$NT_BIN")/libntfault.so
[[ -f $FAULT_LIB ]] || nt_fail "fault library not built: $FAULT_LIB"
nt_start_collector c1 LD_PRELOAD="$FAULT_LIB" NTFAULT_KILL_AT_JOURNAL_WRITE=1
nt_wait_collector_ready c1

# A burst of 1,000 messages of 5 events, no rate limit.
nt_simulate "$NT_TMP/sim.json" --clinics 1 --devices 5 --events 5000 --events-per-message 5 \
    --seed 808
expected=$(nt_json "$NT_TMP/sim.json" .expected.events)
nt_wait_collector_exit c1 60
nt_expect_eq "exit status (killed itself with SIGKILL)" 137 "$NT_EXIT_CODE"
at_death=$(nt_sql "$EV")
nt_log "collector died before its first journal write with $at_death of $expected events committed"
nt_expect_true "events committed before the death ($at_death) < $expected" \
    test "$at_death" -lt "$expected"

nt_start_collector c1
nt_wait_collector_ready c1
nt_wait_counts "$NT_TMP/sim.json" -- 300
nt_check_no_duplicate_keys
nt_finish
