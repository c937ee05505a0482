#!/usr/bin/env bash
# test_partitions.sh -- issue 11, point 8: events time-partitioned (013_partitions.sql) with the
# event identity still enforced.
#   1. events is partitioned by quarter of received_at: the current quarter and two after it
#      exist, a default partition takes anything beyond, each partition has the append-only
#      trigger; events_partitions_ensure() is idempotent.
#      Only the owner may ask for more than two quarters ahead; a quarter whose rows already went
#      to the default partition is skipped and the quarters after it are still created; a locked
#      partition makes events_partitions_ensure() warn and return 0, never fail its caller.
#   2. one identity, two partitions: a row whose identity is stored, with a received_at in another
#      quarter (or years ahead, in the default partition), is refused with unique_violation
#      naming event_keys; the collector's login cannot write a partition directly (past the
#      trigger that keeps the identity).
#   3. a fleet's events stored in another quarter than now, every message then redelivered byte
#      for byte through the broker: nothing is stored twice (events and raw_messages unchanged, no
#      duplicate identity), the collector took its staging path and stayed healthy.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate

# ---- 1. the partitions ----------------------------------------------------------------------------
nt_expect_eq "events is a partitioned table" "p" \
    "$(nt_sql "SELECT relkind FROM pg_class WHERE oid = 'needletrace.events'::regclass")"
nt_expect_eq "partition key" "RANGE (received_at)" \
    "$(nt_sql "SELECT pg_get_partkeydef('needletrace.events'::regclass)")"
parts=$(nt_sql "SELECT string_agg(c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid), E'\n'
                  ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'needletrace.events'::regclass")
printf '%s\n' "$parts"
for q in 0 1 2; do
    name=$(nt_sql "SELECT to_char(now() AT TIME ZONE 'UTC' + make_interval(months => 3 * $q),
                                  '\"events_\"YYYY\"q\"Q')")
    at=$(nt_sql "SELECT (date_trunc('quarter', now() AT TIME ZONE 'UTC')
                         + make_interval(months => 3 * $q)) AT TIME ZONE 'UTC'")
    got=$(nt_sql "SELECT tableoid::regclass::text FROM (SELECT 1) x LEFT JOIN LATERAL (
        SELECT c.oid AS tableoid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'needletrace.events'::regclass AND c.relpartbound IS NOT NULL
           AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
           AND '$at'::timestamptz >= coalesce(substring(pg_get_expr(c.relpartbound, c.oid)
                   FROM 'FROM \(''([^'']+)''\)')::timestamptz, '-infinity')
           AND '$at'::timestamptz < substring(pg_get_expr(c.relpartbound, c.oid)
                   FROM 'TO \(''([^'']+)''\)')::timestamptz) p ON true")
    nt_expect_true "quarter +$q ($name, from $at) has a partition: $got" test -n "$got"
done
nt_expect_true "a default partition" grep -q '^events_default DEFAULT$' <<<"$parts"
nt_expect_eq "partitions without the append-only row trigger" 0 "$(nt_sql "
    SELECT count(*) FROM pg_inherits i WHERE i.inhparent = 'needletrace.events'::regclass
       AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = i.inhrelid
                          AND t.tgname = 'append_only' AND t.tgenabled = 'A')")"
nt_expect_eq "events_partitions_ensure() again creates" 0 \
    "$(nt_sql "SELECT needletrace.events_partitions_ensure()")"
nt_expect_eq "events_partitions_ensure(4) adds two quarters" 2 \
    "$(nt_sql "SELECT needletrace.events_partitions_ensure(4)")"

# ---- 2. one identity, two partitions ---------------------------------------------------------------
COLS="clinic_id, device_serial, boot_id, seq, kind, device_time, received_at, payload_sha256,
      collector_id"
row() { # row RECEIVED_AT: one event of identity (CL-P, PEN-P, 7, 1)
    printf "('CL-P', 'PEN-P', 7, 1, 'device_status', now(), %s, sha256('x'), 'it')" "$1"
}
collector_sql() { # as the collector's login
    psql -X -q -At -v ON_ERROR_STOP=1 "$NEEDLETRACE_DATABASE_URL" -c "$1" 2>&1
}
out=$(collector_sql "INSERT INTO needletrace.events ($COLS) VALUES $(row "now()")")
nt_expect_eq "the collector's login stores an event" "" "$out"
for when in "now() + interval '6 months'" "now() + interval '1 year'" \
    "'2099-01-01'::timestamptz" "'1999-01-01'::timestamptz"; do
    rc=0
    out=$(collector_sql "INSERT INTO needletrace.events ($COLS) VALUES $(row "$when")") || rc=$?
    nt_expect_true "the same identity received at $when refused ($(head -1 <<<"$out"))" \
        grep -q 'duplicate key value violates unique constraint "event_keys_pkey"' <<<"$out"
done
rc=0
out=$(collector_sql "COPY needletrace.events (clinic_id, device_serial, boot_id, seq, kind,
    device_time, received_at, payload_sha256, collector_id) FROM STDIN" \
    <<<$'CL-P\tPEN-P\t7\t1\tdevice_status\t2026-01-01\t2099-06-01\t\\\\x00\tit') || rc=$?
nt_expect_true "... and by COPY ($(head -1 <<<"$out"))" grep -q 'event_keys_pkey' <<<"$out"
nt_expect_eq "rows of that identity" 1 "$(nt_sql "SELECT count(*) FROM needletrace.events
    WHERE clinic_id = 'CL-P' AND device_serial = 'PEN-P'")"
out=$(collector_sql "INSERT INTO needletrace.events ($COLS) VALUES $(row "'2099-01-01'") ON CONFLICT
    DO NOTHING" || true)
nt_expect_true "ON CONFLICT DO NOTHING does not get past it either" grep -q 'event_keys_pkey' \
    <<<"$out"
part=$(nt_sql "SELECT tableoid::regclass FROM needletrace.events WHERE clinic_id = 'CL-P'")
rc=0
out=$(collector_sql "INSERT INTO $part ($COLS) VALUES $(row "now()")") || rc=$?
nt_expect_true "the collector cannot write partition $part directly ($(head -1 <<<"$out"))" \
    grep -q 'permission denied' <<<"$out"
rc=0
out=$(collector_sql "INSERT INTO needletrace.event_keys VALUES ('a', 'b', 1, 1, '\\x00', now())") ||
    rc=$?
nt_expect_true "nor event_keys ($(head -1 <<<"$out"))" grep -q 'permission denied' <<<"$out"
out=$(collector_sql "INSERT INTO needletrace.events ($COLS) VALUES
    ('CL-P', 'PEN-P', 7, 2, 'device_status', now(), '2099-01-01', sha256('y'), 'it')")
nt_expect_eq "an event received years ahead lands in" "needletrace.events_default" \
    "$(nt_sql "SELECT tableoid::regclass FROM needletrace.events WHERE seq = 2
                  AND clinic_id = 'CL-P'")"
nt_sql "ALTER TABLE needletrace.events DISABLE TRIGGER append_only;
        ALTER TABLE needletrace.event_keys DISABLE TRIGGER append_only;
        DELETE FROM needletrace.events WHERE clinic_id = 'CL-P';
        DELETE FROM needletrace.event_keys WHERE clinic_id = 'CL-P';
        ALTER TABLE needletrace.events ENABLE ALWAYS TRIGGER append_only;
        ALTER TABLE needletrace.event_keys ENABLE ALWAYS TRIGGER append_only" >/dev/null

# ---- 1b. partition care (017_partitions_care.sql) ---------------------------------------------------
rc=0
out=$(collector_sql "SELECT needletrace.events_partitions_ensure(8)") || rc=$?
nt_expect_true "the collector's login may not ask for 8 quarters ahead ($(head -1 <<<"$out"))" \
    grep -q 'permission denied for function events_partitions_ensure' <<<"$out"
nt_expect_eq "the collector's login may keep two ahead" 0 \
    "$(collector_sql "SELECT needletrace.events_partitions_ensure()")"
q5=$(nt_sql "SELECT (date_trunc('quarter', now() AT TIME ZONE 'UTC') + interval '15 months'
                     + interval '1 day') AT TIME ZONE 'UTC'")
collector_sql "INSERT INTO needletrace.events ($COLS) VALUES
    ('CL-P', 'PEN-P', 7, 3, 'device_status', now(), '$q5', sha256('z'), 'it')" >/dev/null
nt_expect_eq "an event received 5 quarters ahead ($q5) lands in" "needletrace.events_default" \
    "$(nt_sql "SELECT tableoid::regclass FROM needletrace.events WHERE seq = 3
                  AND clinic_id = 'CL-P'")"
out=$(nt_psql needletrace "SELECT needletrace.events_partitions_ensure(8)" 2>&1)
nt_expect_true "ensure(8) skips that quarter and makes the three after it: $(tr '\n' ' ' <<<"$out")" \
    grep -qx 3 <<<"$out"
nt_expect_true "... saying why" grep -q 'are in events_default' <<<"$out"
nt_expect_eq "that event is still in" "needletrace.events_default" \
    "$(nt_sql "SELECT tableoid::regclass FROM needletrace.events WHERE seq = 3
                  AND clinic_id = 'CL-P'")"
# The owner's way out (README, Growth): that quarter's rows moved, unchanged, to a partition of
# their own.
q5name=$(nt_sql "SELECT to_char('$q5'::timestamptz AT TIME ZONE 'UTC', '\"events_\"YYYY\"q\"Q')")
q5from=$(nt_sql "SELECT date_trunc('quarter', '$q5'::timestamptz AT TIME ZONE 'UTC')")
nt_psql needletrace "BEGIN;
CREATE TABLE needletrace.$q5name (LIKE needletrace.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE needletrace.events_default DISABLE TRIGGER append_only;
WITH moved AS (DELETE FROM needletrace.events_default
                WHERE received_at >= '$q5from+00' AND received_at < '$q5from+00'::timestamptz
                      + interval '3 months' RETURNING *)
INSERT INTO needletrace.$q5name SELECT * FROM moved;
ALTER TABLE needletrace.events_default ENABLE ALWAYS TRIGGER append_only;
ALTER TABLE needletrace.events ATTACH PARTITION needletrace.$q5name
    FOR VALUES FROM ('$q5from+00') TO (('$q5from+00'::timestamptz + interval '3 months'));
SELECT needletrace.events_partition_dress('needletrace.$q5name');
COMMIT" >/dev/null || nt_fail "moving a quarter out of events_default failed"
nt_expect_eq "after the owner's move the event is in" "needletrace.$q5name" \
    "$(nt_sql "SELECT tableoid::regclass FROM needletrace.events WHERE seq = 3
                  AND clinic_id = 'CL-P'")"
nt_expect_eq "... with its append-only trigger" "A" "$(nt_sql "SELECT tgenabled FROM pg_trigger
    WHERE tgrelid = 'needletrace.$q5name'::regclass AND tgname = 'append_only'")"
# A partition locked by someone else (an owner's ALTER, a VACUUM FULL): ensure warns, returns 0.
nt_psql needletrace "BEGIN; LOCK TABLE needletrace.events_default IN ACCESS EXCLUSIVE MODE;
                     SELECT pg_sleep(8); COMMIT" >/dev/null 2>&1 &
locker=$!
nt_wait_for "the default partition locked" 30 nt_sql_eq 1 "SELECT count(*) FROM pg_locks
    WHERE relation = 'needletrace.events_default'::regclass AND mode = 'AccessExclusiveLock'
      AND granted"
t0=$(nt_now_ms)
rc=0
out=$(collector_sql "SELECT needletrace.events_partitions_ensure()") || rc=$?
nt_expect_eq "ensure() against a locked partition: exit code" 0 "$rc"
nt_expect_true "... returns 0 with a warning in $(($(nt_now_ms) - t0)) ms: $(tr '\n' ' ' <<<"$out")" \
    grep -q 'could not create the partitions ahead' <<<"$out"
wait "$locker" || true
nt_sql "ALTER TABLE needletrace.events DISABLE TRIGGER append_only;
        ALTER TABLE needletrace.event_keys DISABLE TRIGGER append_only;
        DELETE FROM needletrace.events WHERE clinic_id = 'CL-P';
        DELETE FROM needletrace.event_keys WHERE clinic_id = 'CL-P';
        ALTER TABLE needletrace.events ENABLE ALWAYS TRIGGER append_only;
        ALTER TABLE needletrace.event_keys ENABLE ALWAYS TRIGGER append_only" >/dev/null

# ---- 3. a redelivery months later ----------------------------------------------------------------
nt_start_collector c1
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 2 --events 800 --events-per-message 4 \
    --seed 1303
nt_wait_counts "$NT_TMP/sim.json" -- 300
read -r E R Q <<<"$(nt_counts)"
nt_stop_collector c1
# The superuser moves every stored event (and its key) two quarters on: as if it had been received
# then; the collector's next messages are received now, in another partition.
nt_sql "ALTER TABLE needletrace.events DISABLE TRIGGER append_only;
        ALTER TABLE needletrace.event_keys DISABLE TRIGGER append_only;
        CREATE TABLE public.moved AS SELECT * FROM needletrace.events;
        UPDATE public.moved SET received_at = received_at + interval '6 months';
        DELETE FROM needletrace.events; DELETE FROM needletrace.event_keys;
        INSERT INTO needletrace.events SELECT * FROM public.moved;
        ALTER TABLE needletrace.events ENABLE ALWAYS TRIGGER append_only;
        ALTER TABLE needletrace.event_keys ENABLE ALWAYS TRIGGER append_only" >/dev/null
now_part=$(nt_sql "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'needletrace.events'::regclass
      AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
      AND now() < substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
      AND now() >= coalesce(substring(pg_get_expr(c.relpartbound, c.oid)
                            FROM 'FROM \(''([^'']+)''\)')::timestamptz, '-infinity')")
nt_log "events stored: $(nt_sql "SELECT string_agg(p || '=' || n, ' ') FROM (SELECT
    tableoid::regclass::text p, count(*) n FROM needletrace.events GROUP BY 1) x"); now is in $now_part"
nt_expect_eq "events in the partition of now before the redelivery" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.$now_part")"

nt_start_collector c1
nt_wait_collector_ready c1
nt_sql "COPY (SELECT topic, encode(payload, 'base64') FROM needletrace.raw_messages
              ORDER BY journal_pos) TO STDOUT" >"$NT_TMP/redeliver.tsv"
sent=0
while IFS=$'\t' read -r topic b64; do
    base64 -d <<<"${b64//\\n/}" | mosquitto_pub -h 127.0.0.1 -p "$NT_BROKER_PORT" -q 1 \
        -t "$topic" -s || nt_fail "mosquitto_pub failed"
    sent=$((sent + 1))
done <"$NT_TMP/redeliver.tsv"
nt_log "redelivered $sent messages byte for byte"
# shellcheck disable=SC2317 # called by nt_wait_for
drained() {
    local got end ck
    got=$(nt_metric mqtt_messages_received_total) end=$(nt_metric journal_end_position)
    ck=$(nt_metric journal_checkpoint_position)
    echo "received $got, journal end $end, checkpoint $ck"
    [[ ${got:-0} -ge $sent && -n $end && $end == "$ck" ]]
}
nt_wait_for "the collector received and committed the redelivery" 120 drained
read -r E2 R2 Q2 <<<"$(nt_counts)"
nt_expect_eq "events rows after the redelivery" "$E" "$E2"
nt_expect_eq "raw_messages rows after the redelivery" "$R" "$R2"
nt_expect_eq "quarantine rows after the redelivery" "$Q" "$Q2"
nt_expect_eq "events in the partition of now" 0 "$(nt_sql "SELECT count(*) FROM needletrace.$now_part")"
nt_check_no_duplicate_keys
nt_expect_eq "events without their key" 0 "$(nt_sql "SELECT count(*) FROM needletrace.events e
    WHERE NOT EXISTS (SELECT 1 FROM needletrace.event_keys k WHERE (k.clinic_id, k.device_serial,
          k.boot_id, k.seq, k.received_at) = (e.clinic_id, e.device_serial, e.boot_id, e.seq,
          e.received_at))")"
nt_expect_true "the collector took its staging path ($(nt_metric db_batches_fallback_total))" \
    test "$(nt_metric db_batches_fallback_total)" -ge 1
nt_expect_eq "messages quarantined as db_rejected" 0 "$(nt_sql "SELECT count(*)
    FROM needletrace.quarantine WHERE reason = 'db_rejected'")"
nt_stop_collector c1
nt_finish
