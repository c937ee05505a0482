#!/usr/bin/env bash
# test_journal_faults.sh -- issue 8, point 1: a journal that cannot be written is backpressure,
# never an exit and never an acknowledgement. The fault library (tests/fault/ntfault.c,
# preloaded from outside) makes the journal's writes and syncs fail with ENOSPC while a control
# file exists (a full disk), then its fdatasync fail with EIO (pages in doubt). Each time the
# collector must stay up, say so in /readyz and the metrics, acknowledge nothing it did not make
# durable (the broker redelivers it), and resume by itself on a fresh segment once the fault is
# gone -- ending with exactly the simulator's counts, no message lost or doubled.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
FAULT_LIB=$(dirname "$NT_BIN")/libntfault.so
[[ -f $FAULT_LIB ]] || nt_fail "fault library not built: $FAULT_LIB"
FULL=$NT_TMP/disk-full
EIO=$NT_TMP/sync-eio
nt_start_collector c1 LD_PRELOAD="$FAULT_LIB" NTFAULT_ENOSPC_FILE="$FULL" \
    NTFAULT_EIO_SYNC_FILE="$EIO"
nt_wait_collector_ready c1
pid=$(nt_collector_pid c1)

# shellcheck disable=SC2317 # invoked through nt_wait_for / nt_hold
metric() {
    nt_http c1 /metrics | awk -v m="$1" '$1 == m { print $2 }'
}
# shellcheck disable=SC2317
journal_failed() {
    local v
    v=$(metric needletrace_journal_failed)
    echo "needletrace_journal_failed=$v"
    [[ $v == 1 ]]
}
# shellcheck disable=SC2317
readyz_names_journal() {
    local body
    body=$(curl -sS --max-time 5 "http://127.0.0.1:${NT_CHTTP[c1]}/readyz" || true)
    echo "$body"
    [[ $body == *"journal cannot be written"* ]]
}
# shellcheck disable=SC2317
alive() {
    nt_pid_alive "$pid"
}

for fault in ENOSPC EIO; do
    if [[ $fault == ENOSPC ]]; then ctl=$FULL; seed=41; else ctl=$EIO; seed=42; fi
    touch "$ctl"
    nt_log "fault $fault on: publishing"
    nt_simulate "$NT_TMP/sim-$fault.json" --clinics 1 --devices 4 --events 4000 \
        --events-per-message 5 --seed $seed
    nt_wait_for "the collector to report the journal failed ($fault)" 60 journal_failed
    nt_wait_for "/readyz to name the journal ($fault)" 30 readyz_names_journal
    nt_hold "the collector stays up while the journal refuses writes ($fault)" 3 alive
    nt_expect_true "/metrics counts the failure" test "$(metric needletrace_journal_failures_total)" -ge 1
    rm -f "$ctl"
    nt_log "fault $fault off: the collector must resume by itself"
    if [[ $fault == ENOSPC ]]; then
        nt_wait_counts "$NT_TMP/sim-ENOSPC.json" -- 120
    else
        nt_wait_counts "$NT_TMP/sim-ENOSPC.json" "$NT_TMP/sim-EIO.json" -- 120
    fi
    nt_wait_for "needletrace_journal_failed back to 0 ($fault)" 30 \
        bash -c "[[ \$(curl -fsS --max-time 5 http://127.0.0.1:${NT_CHTTP[c1]}/metrics | awk '\$1 == \"needletrace_journal_failed\" { print \$2 }') == 0 ]]"
    nt_wait_collector_ready c1
done
nt_expect_eq "collector pid unchanged (never exited)" "$pid" "$(nt_collector_pid c1)"
nt_expect_true "the collector is still running" nt_pid_alive "$pid"
segments=$(find "$NT_TMP/journal-c1" -name '*.ntj' | wc -l)
nt_log "journal segments now: $segments"
nt_check_no_duplicate_keys
nt_finish
