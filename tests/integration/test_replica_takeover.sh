#!/usr/bin/env bash
# test_replica_takeover.sh -- a replica publishes another replica's undelivered alert only when
# that replica is known gone, never merely because the alert is late:
#  (a) SQL: collector B does not get A's alert, 10 minutes overdue, while A's heartbeat is fresh;
#      gets it once A's heartbeat is older than replica_gone_after, or A is marked stopped; a
#      fresh heartbeat (A back) takes it away again; a longer replica_gone_after keeps A alive;
#      an alert of a collector never heard of is taken over; A always gets its own;
#  (b) a running collector records its heartbeat at connect and every 5 s, and marks itself
#      stopped on SIGTERM (the mark is cleared at its next start).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_migrate

# b_gets: the alerts undelivered_alerts('B') hands to collector B, as "id id ...".
b_gets() {
    nt_sql "SELECT coalesce(string_agg(alert_id::text, ' ' ORDER BY alert_id), '')
              FROM needletrace.undelivered_alerts('B', 100)"
}
# alert_of COLLECTOR SEQ: inserts an alert raised by COLLECTOR (its outbox row due 10 minutes
# ago) and prints its id.
alert_of() {
    nt_sql "WITH a AS (
                INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, boot_id,
                                                seq, details, collector_id)
                VALUES ('CLOCK_SKEW', 'warning', 'takeover', 'pen-1', 1, $2, '{}', '$1')
                RETURNING alert_id, clinic_id)
            INSERT INTO needletrace.alert_outbox (clinic_id, alert_id, severity_rank, collector_id,
                                                  next_attempt_at)
            SELECT clinic_id, alert_id, 1, '$1', now() - interval '10 minutes' FROM a
            RETURNING alert_id"
}

# ---- (a) the SQL -------------------------------------------------------------------------------
nt_expect_eq "replica_gone_after is a setting" "3 minutes" \
    "$(nt_sql "SELECT value FROM needletrace.settings WHERE key = 'replica_gone_after'")"
nt_sql "SELECT needletrace.collector_heartbeat('A')" >/dev/null
a=$(alert_of A 1)
nt_expect_eq "A's own overdue alert goes to A" "$a" \
    "$(nt_sql "SELECT string_agg(alert_id::text, ' ') FROM needletrace.undelivered_alerts('A', 100)")"
nt_expect_eq "B does not take A's alert, 10 min overdue, while A's heartbeat is fresh" "" "$(b_gets)"

nt_sql "UPDATE needletrace.collectors SET heartbeat_at = now() - interval '181 seconds' WHERE collector_id = 'A'"
nt_expect_eq "B takes it once A's heartbeat is older than replica_gone_after" "$a" "$(b_gets)"

nt_sql "UPDATE needletrace.settings SET value = '5 minutes' WHERE key = 'replica_gone_after'"
nt_expect_eq "not with replica_gone_after at 5 minutes" "" "$(b_gets)"
nt_sql "UPDATE needletrace.settings SET value = '3 minutes' WHERE key = 'replica_gone_after'"

nt_sql "SELECT needletrace.collector_heartbeat('A')" >/dev/null
nt_expect_eq "A's heartbeat again: B does not take it" "" "$(b_gets)"
nt_sql "SELECT needletrace.collector_stopped('A')" >/dev/null
nt_expect_eq "A marked stopped: B takes it at once" "$a" "$(b_gets)"
nt_sql "SELECT needletrace.collector_heartbeat('A')" >/dev/null
nt_expect_eq "A back (heartbeat clears the stop mark): B does not take it" "" "$(b_gets)"
nt_expect_eq "stop mark cleared" "t" \
    "$(nt_sql "SELECT stopped_at IS NULL FROM needletrace.collectors WHERE collector_id = 'A'")"

z=$(alert_of Z 2)
nt_expect_eq "an alert of a collector never heard of is taken over" "$z" "$(b_gets)"

rc=0
nt_sql "UPDATE needletrace.settings SET value = 'soon' WHERE key = 'replica_gone_after'" \
    >/dev/null 2>&1 || rc=$?
nt_expect_true "a replica_gone_after that is no interval is refused" test "$rc" -ne 0

# ---- (b) a running collector --------------------------------------------------------------------
nt_start_broker
nt_start_collector c1
nt_wait_collector_ready c1
HB="SELECT extract(epoch FROM heartbeat_at)::numeric(20,3) FROM needletrace.collectors WHERE collector_id = 'it-c1'"
nt_wait_for "it-c1's heartbeat recorded" 10 nt_sql_ge 0 \
    "SELECT count(*) - 1 FROM needletrace.collectors WHERE collector_id = 'it-c1' AND stopped_at IS NULL"
first=$(nt_sql "$HB")
# shellcheck disable=SC2317 # invoked through nt_wait_for
heartbeat_moved() {
    local now
    now=$(nt_sql "$HB") || return 1
    echo "heartbeat $now (first $first)"
    [[ $now != "$first" ]]
}
nt_wait_for "the heartbeat renewed within about 5 s" 10 heartbeat_moved
nt_stop_collector c1 TERM
nt_expect_eq "exit code" 0 "$NT_EXIT_CODE"
nt_expect_eq "it-c1 marked stopped on SIGTERM" "t" \
    "$(nt_sql "SELECT stopped_at IS NOT NULL FROM needletrace.collectors WHERE collector_id = 'it-c1'")"
nt_start_collector c1
nt_wait_collector_ready c1
nt_wait_for "the stop mark cleared at the next start" 10 nt_sql_eq t \
    "SELECT stopped_at IS NULL FROM needletrace.collectors WHERE collector_id = 'it-c1'"
nt_finish
