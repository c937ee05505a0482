#!/usr/bin/env bash
# test_ingest_fleet.sh -- (a) a fleet of 3 clinics x 10 handpieces (~20,000 events): the
# database ends with exactly the simulator's counts, no duplicate keys, the right counts per
# clinic and per kind, no seq gaps, and every raw payload matching its SHA-256.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1

t0=$(nt_now_ms)
nt_simulate "$NT_TMP/sim.json" --clinics 3 --devices 10 --events 20000 --events-per-message 10 \
    --seed 101
nt_log "expecting $(jq -c '.expected | {raw_messages, events, quarantine}' "$NT_TMP/sim.json")"
nt_wait_counts "$NT_TMP/sim.json" -- 300
elapsed_ms=$(($(nt_now_ms) - t0))
events=$(nt_json "$NT_TMP/sim.json" .expected.events)
nt_log "publish -> settled in database: $events events in ${elapsed_ms} ms" \
    "($((events * 1000 / (elapsed_ms > 0 ? elapsed_ms : 1))) events/s, including the 1.2 s settle check)"

nt_expect_true "simulate generated about 20,000 events ($events)" test "$events" -ge 19000
nt_check_no_duplicate_keys
nt_check_breakdown "events per clinic" .expected.events_by_clinic clinic_id events "$NT_TMP/sim.json"
nt_check_breakdown "events per kind" .expected.events_by_kind kind events "$NT_TMP/sim.json"
nt_expect_eq "clinics with events" 3 "$(nt_sql 'SELECT count(DISTINCT clinic_id) FROM needletrace.events')"
nt_expect_eq "handpieces with events" 30 \
    "$(nt_sql 'SELECT count(DISTINCT (clinic_id, device_serial)) FROM needletrace.events')"
nt_expect_eq "(device, boot) with a seq gap" 0 "$(nt_sql "SELECT count(*) FROM (
    SELECT 1 FROM needletrace.events GROUP BY clinic_id, device_serial, boot_id
    HAVING count(*) <> max(seq) - min(seq) + 1) g")"
nt_expect_eq "raw payloads whose SHA-256 does not match" 0 \
    "$(nt_sql 'SELECT count(*) FROM needletrace.raw_messages WHERE payload_sha256 <> sha256(payload)')"
nt_expect_eq "sum of raw_messages.event_count" "$events" \
    "$(nt_sql 'SELECT coalesce(sum(event_count), 0) FROM needletrace.raw_messages')"
nt_expect_eq "quarantine rows" 0 "$(nt_count quarantine)"
nt_expect_true "collector checkpoint recorded" \
    test "$(nt_sql "SELECT count(*) FROM needletrace.collector_checkpoints WHERE collector_id = 'it-c1'")" -eq 1
nt_log "metrics sample: $(nt_http c1 /metrics | grep -v '^#' | head -n 8 | tr '\n' ' ')"
nt_finish
