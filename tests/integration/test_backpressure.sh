#!/usr/bin/env bash
# test_backpressure.sh -- with PostgreSQL down, the journal fills to its bound: the collector
# holds PUBACKs back (metric needletrace_backpressure 1): the broker sends at most the receive
# maximum more and queues the rest, while the connection stays up (the collector keeps reading
# and pings ahead of the held PUBACKs: no reconnect over several keep-alive intervals).
# Once the database is back it drains the journal, acknowledges at full speed again and ends
# with exactly the simulator's counts.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

EV='SELECT count(*) FROM needletrace.events'
nt_start_pg
nt_start_broker
nt_migrate
# 256 KiB bound and 64 KiB segments: a few hundred messages fill it. Receive maximum 1 and a
# 5 s keep-alive: while full nothing is acknowledged and the collector pings every 3 s.
# (mosquitto 2.0 moves up to receive-maximum queued messages in flight for each PUBACK it gets:
# with 20, the few hundred PUBACKs before the bound could release the whole fleet's messages.)
nt_start_collector c1 NEEDLETRACE_JOURNAL_MAX_BYTES=256KiB NEEDLETRACE_JOURNAL_SEGMENT_BYTES=64KiB \
    NEEDLETRACE_MQTT_RECEIVE_MAXIMUM=1 NEEDLETRACE_MQTT_KEEPALIVE_S=5
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
nt_wait_for "the collector to hold PUBACKs back (journal full)" 60 backpressured
received=$(metric needletrace_mqtt_messages_received_total)
losses=$(metric needletrace_mqtt_connection_losses_total)
jbytes=$(metric needletrace_journal_bytes)
published=$(nt_json "$NT_TMP/sim.json" .messages_published)
nt_log "backpressure after receiving $received of $published messages; journal holds $jbytes bytes"
nt_expect_true "the collector read fewer messages than were published (the broker queues the rest)" \
    test "$received" -lt "$published"
# Over the bound by at most what the broker had in flight when it was reached; no more arrive
# afterwards (below), and the broker queues the rest.
nt_expect_true "journal bytes ($jbytes) above the 256 KiB bound" test "$jbytes" -ge $((256 * 1024))
# 12 s = more than two keep-alive intervals: without keep-alive writes the broker (1.5 x 5 s) or
# libmosquitto (no PINGRESP) would cut the connection.
nt_hold "still holding PUBACKs back while the database is down" 12 backpressured
after=$(metric needletrace_mqtt_messages_received_total)
nt_log "received $received then $after messages over 12 s of backpressure"
nt_expect_eq "the broker connection stayed up through the keep-alive intervals" "$losses" \
    "$(metric needletrace_mqtt_connection_losses_total)"
nt_expect_eq "still connected (needletrace_mqtt_connected)" 1 "$(metric needletrace_mqtt_connected)"
# Nothing is acknowledged while full (the keep-alive pings go ahead of the held PUBACKs): at most
# the one message of the receive maximum can still come in.
nt_expect_true "at most 1 more message came in while full ($((after - received)))" \
    test $((after - received)) -le 1

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
