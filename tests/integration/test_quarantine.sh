#!/usr/bin/env bash
# test_quarantine.sh -- (c) 5% malformed and 5% spoofed messages: one quarantine row per
# rejected message with its reason, raw payload and topic; valid traffic is unaffected.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1

nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 5 --events 10000 --events-per-message 5 \
    --malformed-rate 0.05 --spoof-rate 0.05 --seed 303
nt_log "expecting $(jq -c '.expected | {raw_messages, events, quarantine, quarantine_by_reason}' "$NT_TMP/sim.json")"
nt_expect_true "malformed messages were published" \
    test "$(nt_json "$NT_TMP/sim.json" .expected.quarantine_by_reason.not_protobuf)" -gt 0
nt_expect_true "spoofed messages were published" \
    test "$(nt_json "$NT_TMP/sim.json" .expected.quarantine_by_reason.serial_mismatch)" -gt 0
nt_wait_counts "$NT_TMP/sim.json" -- 300

nt_check_breakdown "quarantine rows by reason" .expected.quarantine_by_reason reason quarantine \
    "$NT_TMP/sim.json"
nt_expect_eq "quarantine rows without payload, reason or topic" 0 "$(nt_sql "SELECT count(*)
    FROM needletrace.quarantine
    WHERE payload IS NULL OR octet_length(payload) = 0 OR coalesce(reason, '') = ''
       OR coalesce(topic, '') = ''")"
nt_expect_eq "quarantine topics not of the telemetry form" 0 "$(nt_sql "SELECT count(*)
    FROM needletrace.quarantine WHERE topic !~ '^clinics/[^/]+/handpieces/[^/]+/telemetry\$'")"
nt_expect_eq "quarantine payloads whose SHA-256 does not match" 0 "$(nt_sql "SELECT count(*)
    FROM needletrace.quarantine WHERE payload_sha256 <> sha256(payload)")"
nt_check_no_duplicate_keys
nt_check_breakdown "events per clinic (valid traffic)" .expected.events_by_clinic clinic_id events \
    "$NT_TMP/sim.json"
nt_log "quarantine sample: $(nt_sql "SELECT reason || ' ' || topic || ' ' || octet_length(payload) || 'B'
    FROM needletrace.quarantine ORDER BY reason, topic LIMIT 2" | tr '\n' ';')"
nt_finish
