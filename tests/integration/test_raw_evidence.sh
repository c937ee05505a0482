#!/usr/bin/env bash
# test_raw_evidence.sh -- raw_messages keeps each message once without a key of its own
# (009_raw_evidence_lean.sql): a message whose event identities were all stored from a message
# with other content is kept once, marked conflicting; redeliveries of either add nothing; a
# message with one new event is stored as usual. And DEPTH_OUT_OF_RANGE reads the model maximum
# from the event row (events.device_model).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR
source "$NT_LIB_DIR/pub.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
nt_pub_setup
nt_sql "UPDATE needletrace.device_models SET max_depth_um = 400 WHERE device_model = 'NP-300'"
nt_start_collector c1
nt_wait_collector_ready c1

T=$(nt_now_ms)
R="FROM needletrace.raw_messages WHERE clinic_id = 'CL-R' AND device_serial = 'HP-R1'"
E="FROM needletrace.events WHERE clinic_id = 'CL-R' AND device_serial = 'HP-R1'"
# A: seq 1..3 (100, 101, 102 um), then B: the same identities with other content (120.. um).
nt_pub deep CL-R HP-R1 1 3 "$T" --depth0 100
nt_wait_for "message A stored" 60 nt_sql_eq 3 "SELECT count(*) $E"
nt_pub deep CL-R HP-R1 1 3 "$T" --depth0 120
nt_wait_for "message B kept as conflicting" 60 nt_sql_eq 1 "SELECT count(*) $R AND conflicting"
# Both again (redeliveries: the same bytes), then C: seq 1..4 (seq 4 is new).
nt_pub deep CL-R HP-R1 1 3 "$T" --depth0 120
nt_pub deep CL-R HP-R1 1 3 "$T" --depth0 100
nt_pub deep CL-R HP-R1 1 4 "$T" --depth0 100
nt_wait_for "message C's new event stored" 60 nt_sql_eq 4 "SELECT count(*) $E"
# The last message is committed once the checkpoint passes it: the journal is all committed.
journal_committed() {
    [[ $(nt_metric journal_checkpoint_position) == \
        "$(nt_metric journal_end_position)" ]]
}
nt_wait_for "journal committed" 60 journal_committed
nt_expect_eq "raw messages of HP-R1 (A, B conflicting, C)" "3" "$(nt_sql "SELECT count(*) $R")"
nt_expect_eq "marked conflicting" "1" "$(nt_sql "SELECT count(*) $R AND conflicting")"
nt_expect_eq "one row per payload" "0" "$(nt_sql "SELECT count(*) FROM (SELECT 1 $R
    GROUP BY payload_sha256 HAVING count(*) > 1) d")"
nt_expect_eq "events of seq 1..3 carry A's hash, seq 4 C's" "A A A C" \
    "$(nt_sql "SELECT string_agg(CASE WHEN r.event_count = 3 THEN 'A' ELSE 'C' END, ' '
                                 ORDER BY e.seq)
         FROM needletrace.events e JOIN needletrace.raw_messages r
           ON r.clinic_id = e.clinic_id AND r.device_serial = e.device_serial
          AND r.payload_sha256 = e.payload_sha256 AND NOT r.conflicting
        WHERE e.clinic_id = 'CL-R' AND e.device_serial = 'HP-R1'")"
nt_expect_eq "conflicting message is B (3 events, depth 120)" "3" \
    "$(nt_sql "SELECT event_count $R AND conflicting")"

# The model maximum (400 um) is below the periorbital limit: the alert names the model.
nt_pub deep CL-R HP-R2 1 1 "$T" --depth0 450
nt_wait_for "DEPTH_OUT_OF_RANGE of HP-R2" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.alerts WHERE device_serial = 'HP-R2'
        AND rule = 'DEPTH_OUT_OF_RANGE'"
nt_expect_eq "limit from the model" "400 model NP-300" \
    "$(nt_sql "SELECT concat_ws(' ', details->>'limit_um', details->>'limit_source',
        details->>'device_model') FROM needletrace.alerts WHERE device_serial = 'HP-R2'")"
nt_expect_eq "device_model on the event row" "NP-300" \
    "$(nt_sql "SELECT device_model FROM needletrace.events WHERE device_serial = 'HP-R2'")"
nt_check_no_duplicate_keys
nt_finish
