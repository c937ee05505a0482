#!/usr/bin/env bash
# test_checkpoint_missing.sh -- issue 8, point 3: a database without this collector's checkpoint
# (emptied, rebuilt, restored from a dump older than the first commit) while the journal has
# released segments -- so what they held was committed to some database, not this one -- stops
# ingest (behind, from position 0), never a silent start at the journal's start; `journal
# accept` creates the checkpoint, records the decision, and the collector replays its journal.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1 NEEDLETRACE_JOURNAL_SEGMENT_BYTES=64KiB
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim-a.json" --clinics 1 --devices 3 --events 3000 --events-per-message 5 \
    --seed 31
nt_wait_counts "$NT_TMP/sim-a.json" -- 120
nt_stop_collector c1
start=$(find "$NT_TMP/journal-c1" -name '*.ntj' | sort | head -n 1 | xargs basename)
nt_log "oldest journal segment now: $start"
nt_expect_true "segments were released (the journal no longer starts at 0)" \
    test "$start" != "00000000000000000000.ntj"
nt_sql "DELETE FROM needletrace.collector_checkpoints WHERE collector_id = 'it-c1'"

nt_start_collector c1 NEEDLETRACE_JOURNAL_SEGMENT_BYTES=64KiB
# shellcheck disable=SC2317 # invoked through nt_wait_for
said_behind() {
    grep -E "position 0\) is behind the journal.s oldest record" "$NT_TMP/collector-c1.log" | tail -n 1
}
nt_wait_for "the collector to stop ingest: no checkpoint, segments released" 30 said_behind
readyz=$(curl -sS --max-time 2 "http://127.0.0.1:${NT_CHTTP[c1]}/readyz" || true)
nt_expect_true "/readyz says ingest is stopped ($readyz)" grep -q "behind" <<<"$readyz"
nt_expect_eq "no checkpoint written meanwhile" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.collector_checkpoints WHERE collector_id = 'it-c1'")"
nt_stop_collector c1
nt_expect_eq "exit code after SIGTERM while stopped" 0 "$NT_EXIT_CODE"

NEEDLETRACE_JOURNAL_DIR="$NT_TMP/journal-c1" NEEDLETRACE_COLLECTOR_ID=it-c1 \
    "$NT_BIN" journal accept --reason "database rebuilt" >"$NT_TMP/accept.log" 2>&1 ||
    nt_fail "journal accept failed: $(cat "$NT_TMP/accept.log")"
nt_log "accept: $(tail -n 2 "$NT_TMP/accept.log" | tr '\n' ' ')"
nt_expect_eq "the reset is recorded" "1|behind|database rebuilt" \
    "$(nt_sql "SELECT count(*) || '|' || max(mismatch) || '|' || max(reason) FROM needletrace.checkpoint_resets")"
nt_start_collector c1 NEEDLETRACE_JOURNAL_SEGMENT_BYTES=64KiB
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim-b.json" --clinics 1 --devices 3 --events 1000 --events-per-message 5 \
    --seed 32
nt_wait_counts "$NT_TMP/sim-a.json" "$NT_TMP/sim-b.json" -- 120
nt_check_no_duplicate_keys
nt_finish
