#!/usr/bin/env bash
# test_duplicates.sh -- (b) 30% of the messages published twice (the identical message
# again): exactly the simulator's counts, no extra rows, no duplicate keys.
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
    --duplicate-rate 0.3 --seed 202
published=$(nt_json "$NT_TMP/sim.json" .messages_published)
dups=$(nt_json "$NT_TMP/sim.json" .duplicates_published)
nt_log "published $published messages of which $dups duplicates;" \
    "expecting $(jq -c '.expected | {raw_messages, events, quarantine}' "$NT_TMP/sim.json")"
nt_expect_true "duplicates were published ($dups of $published)" test "$dups" -gt 0
nt_wait_counts "$NT_TMP/sim.json" -- 300
nt_check_no_duplicate_keys
nt_expect_eq "raw_messages with the same payload twice" 0 "$(nt_sql "SELECT count(*) FROM (
    SELECT 1 FROM needletrace.raw_messages GROUP BY clinic_id, device_serial, payload_sha256
    HAVING count(*) > 1) d")"
nt_check_breakdown "events per clinic" .expected.events_by_clinic clinic_id events "$NT_TMP/sim.json"
nt_finish
