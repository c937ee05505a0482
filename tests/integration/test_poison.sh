#!/usr/bin/env bash
# test_poison.sh -- issue 7, item 1: a message the database rejects never stalls ingest.
#   (a) every message of one pen is refused by the database (a trigger raising SQLSTATE 22023
#       on its events): the other pens' traffic commits exactly; each refused message lands in
#       quarantine as db_rejected, raw bytes kept, the SQLSTATE and message in detail;
#   (b) a rule that raises an error for one pen's messages (CLOCK_SKEW's state row, P0001):
#       likewise, and the rule still alerts for the other pens;
#   (c) a failure no message causes (SQLSTATE 53100 for every row): nothing is quarantined, the
#       collector backs off and says so on /readyz and in its metrics, and commits everything
#       once the database takes rows again.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1

# raw + quarantine rows of the clinics of one simulated run
run_rows() {
    nt_sql "SELECT (SELECT count(*) FROM needletrace.raw_messages WHERE clinic_id LIKE '$1-%')
                 + (SELECT count(*) FROM needletrace.quarantine WHERE clinic_id LIKE '$1-%')"
}

# run_rows_are PREFIX N: true once raw + quarantine rows of the run's clinics are N.
run_rows_are() {
    test "$(run_rows "$1")" -eq "$2"
}

# Every (device, boot) of the given clinics except $2 holds seqs 1..max without a hole.
holes_except() {
    nt_sql "SELECT count(*) FROM (
              SELECT device_serial, boot_id FROM needletrace.events
               WHERE clinic_id LIKE '$1-%' AND device_serial <> '$2'
               GROUP BY 1, 2 HAVING count(*) <> max(seq) OR min(seq) <> 1) x"
}

# ---- (a) one pen's events refused ---------------------------------------------------------------
POISON=NP701-1-2
nt_sql "CREATE FUNCTION public.test_poison() RETURNS trigger LANGUAGE plpgsql AS \$\$
        BEGIN
            IF NEW.device_serial = '$POISON' THEN
                RAISE EXCEPTION 'test poison for %', NEW.device_serial USING ERRCODE = '22023';
            END IF;
            RETURN NEW;
        END \$\$;
        CREATE TRIGGER test_poison BEFORE INSERT ON needletrace.events
            FOR EACH ROW EXECUTE FUNCTION public.test_poison();" >/dev/null

nt_simulate "$NT_TMP/sim-a.json" --clinic-prefix pa --clinics 2 --devices 5 --events 6000 \
    --events-per-message 3 --seed 701
expected=$(nt_json "$NT_TMP/sim-a.json" .expected.raw_messages)
nt_wait_for "every message of run (a) committed or quarantined ($expected)" 120 \
    run_rows_are pa "$expected"

nt_expect_eq "(a) events stored for the refused pen" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.events WHERE device_serial = '$POISON'")"
rejected=$(nt_sql "SELECT count(*) FROM needletrace.quarantine WHERE reason = 'db_rejected'")
nt_expect_true "(a) the refused pen's messages are quarantined as db_rejected ($rejected)" \
    test "$rejected" -gt 0
nt_expect_eq "(a) db_rejected rows of another pen" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.quarantine
               WHERE reason = 'db_rejected' AND device_serial IS DISTINCT FROM '$POISON'")"
nt_expect_eq "(a) db_rejected rows without the SQLSTATE and message, or without their bytes" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.quarantine WHERE reason = 'db_rejected'
               AND (detail NOT LIKE 'SQLSTATE 22023: test poison for $POISON%'
                    OR payload_sha256 <> sha256(payload) OR octet_length(payload) = 0)")"
nt_expect_eq "(a) the clinic without the refused pen: every event" \
    "$(jq '.expected.events_by_clinic["pa-701-0"]' "$NT_TMP/sim-a.json")" \
    "$(nt_sql "SELECT count(*) FROM needletrace.events WHERE clinic_id = 'pa-701-0'")"
nt_expect_eq "(a) pens with a hole in their seqs (lost events)" 0 "$(holes_except pa "$POISON")"
metric=$(nt_http c1 /metrics | sed -n 's/^needletrace_db_quarantined_total{reason="db_rejected"} //p')
nt_expect_eq "(a) metric needletrace_db_quarantined_total{reason=\"db_rejected\"}" "$rejected" "$metric"
isolations=$(nt_http c1 /metrics | sed -n 's/^needletrace_db_isolations_total //p')
nt_expect_true "(a) refused batches were bisected ($isolations), not retried one by one" \
    test "$isolations" -gt 0
logged=$(grep -c 'as db_rejected: the database refused it: SQLSTATE 22023' "$NT_TMP/collector-c1.log")
nt_expect_true "(a) a log line names each quarantined message ($logged for $rejected)" \
    test "$logged" -ge "$rejected"
nt_sql "DROP TRIGGER test_poison ON needletrace.events" >/dev/null

# ---- (b) a rule's error for one pen's messages ----------------------------------------------------
SKEWED=NP702-0-1
nt_sql "CREATE FUNCTION public.test_rule_error() RETURNS trigger LANGUAGE plpgsql AS \$\$
        BEGIN
            IF NEW.device_serial = '$SKEWED' THEN
                RAISE EXCEPTION 'test rule error for %', NEW.device_serial;
            END IF;
            RETURN NEW;
        END \$\$;
        CREATE TRIGGER test_rule_error BEFORE INSERT ON needletrace.clock_skew_alerted
            FOR EACH ROW EXECUTE FUNCTION public.test_rule_error();" >/dev/null
before=$(nt_sql "SELECT count(*) FROM needletrace.quarantine WHERE reason = 'db_rejected'")
nt_simulate "$NT_TMP/sim-b.json" --clinic-prefix pb --clinics 2 --devices 4 --events 4000 \
    --events-per-message 2 --skew-rate 0.05 --seed 702
expected=$(nt_json "$NT_TMP/sim-b.json" .expected.raw_messages)
nt_wait_for "every message of run (b) committed or quarantined ($expected)" 120 \
    run_rows_are pb "$expected"
rejected_b=$(nt_sql "SELECT count(*) FROM needletrace.quarantine
                     WHERE reason = 'db_rejected' AND clinic_id LIKE 'pb-%'")
nt_expect_true "(b) the messages whose rule failed are quarantined ($rejected_b)" \
    test "$rejected_b" -gt 0
nt_expect_eq "(b) rule-error rows of another pen or without the SQLSTATE" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.quarantine
               WHERE reason = 'db_rejected' AND clinic_id LIKE 'pb-%'
                 AND (device_serial <> '$SKEWED' OR detail NOT LIKE 'SQLSTATE P0001: test rule error%')")"
nt_expect_true "(b) CLOCK_SKEW still raised for the other pens" \
    test "$(nt_sql "SELECT count(*) FROM needletrace.alerts
                    WHERE rule = 'CLOCK_SKEW' AND clinic_id LIKE 'pb-%'")" -gt 0
nt_expect_eq "(b) CLOCK_SKEW alerts for the pen whose rule failed" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.alerts
               WHERE rule = 'CLOCK_SKEW' AND device_serial = '$SKEWED'")"
nt_expect_eq "(b) db_rejected rows of run (a) unchanged" "$before" \
    "$(nt_sql "SELECT count(*) FROM needletrace.quarantine
               WHERE reason = 'db_rejected' AND clinic_id NOT LIKE 'pb-%'")"
nt_sql "DROP TRIGGER test_rule_error ON needletrace.clock_skew_alerted" >/dev/null

# ---- (c) a failure no message causes --------------------------------------------------------------
nt_sql "CREATE FUNCTION public.test_disk_full() RETURNS trigger LANGUAGE plpgsql AS \$\$
        BEGIN
            RAISE EXCEPTION 'test: no space left' USING ERRCODE = '53100';
        END \$\$;
        CREATE TRIGGER test_disk_full BEFORE INSERT ON needletrace.raw_messages
            FOR EACH ROW EXECUTE FUNCTION public.test_disk_full();" >/dev/null
quarantined_before=$(nt_sql "SELECT count(*) FROM needletrace.quarantine")
nt_simulate "$NT_TMP/sim-c.json" --clinic-prefix pc --clinics 1 --devices 3 --events 900 \
    --events-per-message 3 --seed 703
nt_wait_for "/readyz says the database refuses batches" 60 \
    bash -c "curl -s --max-time 5 http://127.0.0.1:${NT_CHTTP[c1]}/readyz | grep -q 'refuses batches'"
nt_expect_eq "(c) metric needletrace_db_stalled while refused" 1 \
    "$(nt_http c1 /metrics | sed -n 's/^needletrace_db_stalled //p')"
nt_expect_eq "(c) messages quarantined for a failure no message causes" "$quarantined_before" \
    "$(nt_sql "SELECT count(*) FROM needletrace.quarantine")"
nt_sql "DROP TRIGGER test_disk_full ON needletrace.raw_messages" >/dev/null
expected=$(nt_json "$NT_TMP/sim-c.json" .expected.raw_messages)
nt_wait_for "run (c) committed once the database takes rows again ($expected)" 120 \
    run_rows_are pc "$expected"
nt_expect_eq "(c) events of run (c)" "$(nt_json "$NT_TMP/sim-c.json" .expected.events)" \
    "$(nt_sql "SELECT count(*) FROM needletrace.events WHERE clinic_id LIKE 'pc-%'")"
nt_wait_for "/readyz ready again" 60 nt_http c1 /readyz
nt_expect_eq "(c) metric needletrace_db_stalled after recovery" 0 \
    "$(nt_http c1 /metrics | sed -n 's/^needletrace_db_stalled //p')"
nt_check_no_duplicate_keys
nt_finish
