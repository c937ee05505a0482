#!/usr/bin/env bash
# test_backpressure.sh -- with PostgreSQL down, the journal fills to its bound: the collector
# stops reading from the broker (metric needletrace_backpressure 1, the broker queues), and
# once the database is back it drains the journal, resumes reading and ends with exactly the
# simulator's counts.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

EV='SELECT count(*) FROM needletrace.events'
nt_start_pg
nt_start_broker
nt_migrate
# 256 KiB bound and 64 KiB segments: a few hundred messages fill it.
nt_start_collector c1 NEEDLETRACE_JOURNAL_MAX_BYTES=256KiB NEEDLETRACE_JOURNAL_SEGMENT_BYTES=64KiB
nt_wait_collector_ready c1
pid=$(nt_collector_pid c1)

nt_stop_pg fast
nt_log "PostgreSQL stopped: the journal can only grow"

# shellcheck disable=SC2317 # invoked through nt_wait_for
metric() {
    nt_http c1 /metrics | awk -v m="$1" '$1 == m { print $2 }'
}
# shellcheck disable=SC2317
backpressured() {
    local v
    v=$(metric needletrace_backpressure)
    echo "needletrace_backpressure=$v journal_bytes=$(metric needletrace_journal_bytes)"
    [[ $v == 1 ]]
}
# 2,000 messages of 10 events, ~150 bytes an event: far more than the 256 KiB bound.
nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 5 --events 20000 --events-per-message 10 \
    --seed 909
nt_wait_for "the collector to pause reading (journal full)" 60 backpressured
received=$(metric needletrace_mqtt_messages_received_total)
jbytes=$(metric needletrace_journal_bytes)
published=$(nt_json "$NT_TMP/sim.json" .messages_published)
nt_log "paused after receiving $received of $published messages; journal holds $jbytes bytes"
nt_expect_true "the collector read fewer messages than were published (the broker queues the rest)" \
    test "$received" -lt "$published"
# Reading stops at the first message past the bound (at most one message of 256 KiB over).
nt_expect_true "journal bytes ($jbytes) stay within one message of the 256 KiB bound" \
    test "$jbytes" -lt $((512 * 1024))
nt_hold "still paused while the database is down" 3 backpressured
nt_expect_eq "nothing more read while paused" "$received" "$(metric needletrace_mqtt_messages_received_total)"

nt_start_pg
nt_wait_counts "$NT_TMP/sim.json" -- 300
nt_wait_for "reading resumed (needletrace_backpressure 0)" 60 \
    bash -c "[[ \$(curl -fsS --max-time 5 http://127.0.0.1:${NT_CHTTP[c1]}/metrics | awk '\$1 == \"needletrace_backpressure\" { print \$2 }') == 0 ]]"
nt_expect_eq "collector pid unchanged" "$pid" "$(nt_collector_pid c1)"
nt_expect_true "journal segments behind the checkpoint were deleted (bytes now $(metric needletrace_journal_bytes))" \
    test "$(metric needletrace_journal_bytes)" -lt "$jbytes"
nt_check_no_duplicate_keys
nt_log "events committed: $(nt_sql "$EV")"
nt_finish
