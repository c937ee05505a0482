#!/usr/bin/env bash
# test_checkpoint_mismatch.sh -- a database checkpoint that does not fit the journal stops
# ingest (never a silent skip or replay) until `needletrace journal accept`, and the replay after
# the accept doubles nothing:
#  (a) two collectors started with one collector.id on two journals: whichever commits second
#      finds the checkpoint moved under it (SQLSTATE NT001) and stops with "another journal";
#  (b) checkpoint beyond the journal's end (journal restored from an older copy): stopped,
#      /readyz and the metric say so, the error is logged once, no segment is released,
#      messages published meanwhile are journaled but not committed; accept refuses while the
#      collector runs, SIGTERM stops it within 10 s; accept records the reset (and a second
#      accept has nothing to do); after a restart the whole journal is replayed: exact counts;
#  (c) checkpoint behind the journal's start (database restored / failed over): same, and the
#      lost range is named;
#  (d) the journal directory replaced: "another journal", logged once per (re)connect (a
#      PostgreSQL restart logs it again, and only once);
#  (e) a checkpoint inside a record.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

CP="SELECT journal_pos FROM needletrace.collector_checkpoints WHERE collector_id = 'it-c1'"
SEGMENT=(NEEDLETRACE_JOURNAL_SEGMENT_BYTES=64KiB) # many segments: some are released

nt_start_pg
nt_start_broker
nt_migrate

# shellcheck disable=SC2317 # invoked through nt_wait_for
# stopped_with VERDICT [NAME]: /readyz is 503 and names the verdict and the command.
stopped_with() {
    local r
    r=$(nt_readyz "${2:-c1}") || return 1
    echo "$r"
    [[ $r == 503* && $r == *"($1)"* && $r == *"needletrace journal accept"* ]]
}
segments() {
    find "$NT_TMP/journal-c1" -name '*.ntj' -printf '%f\n' | sort | tr '\n' ' '
}
# shellcheck disable=SC2317 # invoked through nt_expect_true
# still_there SEGMENT...: every one of these segment files still exists.
still_there() {
    local f
    for f in "$@"; do
        [[ -e $NT_TMP/journal-c1/$f ]] || {
            echo "$f was deleted"
            return 1
        }
    done
}
# shellcheck disable=SC2317 # invoked through nt_wait_for
caught_up() {
    local cp end
    cp=$(nt_metric journal_checkpoint_position) && end=$(nt_metric journal_end_position) ||
        return 1
    echo "checkpoint $cp, journal end $end"
    [[ -n $cp && $cp == "$end" ]]
}
accept() {
    env NEEDLETRACE_JOURNAL_DIR="$NT_TMP/journal-c1" NEEDLETRACE_COLLECTOR_ID=it-c1 \
        "$NT_BIN" journal accept "$@"
}
log_count() {
    grep -c -- "$1" "$NT_TMP/collector-c1.log" || true
}
# shellcheck disable=SC2317 # invoked through nt_wait_for
# log_count_is N PATTERN: exactly N lines of c1's log match PATTERN.
log_count_is() {
    local n
    n=$(log_count "$2")
    echo "$n lines"
    [[ $n == "$1" ]]
}

# ---- (a) two collectors, one collector.id -----------------------------------------------------
nt_start_collector c1 "${SEGMENT[@]}"
nt_start_collector c2 NEEDLETRACE_COLLECTOR_ID=it-c1
nt_wait_collector_ready c1
nt_wait_collector_ready c2
nt_simulate "$NT_TMP/sim0.json" --clinics 1 --devices 2 --events 200 --events-per-message 2 \
    --rate 200 --seed 800 --clinic-prefix mm0
nt_wait_for "one of the two stopped with another journal's checkpoint" 60 \
    bash -c "grep -q 'belongs to another journal' '$NT_TMP/collector-c1.log' '$NT_TMP/collector-c2.log'"
loser=c2
grep -q 'belongs to another journal' "$NT_TMP/collector-c1.log" && loser=c1
nt_log "the collector that committed second: $loser"
nt_expect_true "$loser found the checkpoint moved under it, or another journal's at connect" \
    grep -qE 'checkpoint of collector "it-c1" moved|belongs to another journal' \
    "$NT_TMP/collector-$loser.log"
nt_wait_for "$loser's readyz names the mismatch" 30 stopped_with other_journal "$loser"
nt_stop_collector c2 TERM
nt_expect_eq "c2 exit code" 0 "$NT_EXIT_CODE"
nt_stop_collector c1 TERM
rm -rf "$NT_TMP/journal-c1" "$NT_TMP/journal-c2"
nt_sql "DELETE FROM needletrace.collector_checkpoints" >/dev/null

# ---- a first stream, committed -----------------------------------------------------------------
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim1.json" --clinics 2 --devices 4 --events 8000 --events-per-message 4 \
    --rate 1000 --seed 801 --clinic-prefix mm1
nt_wait_counts "$NT_TMP/sim0.json" "$NT_TMP/sim1.json" -- 180
nt_wait_for "checkpoint at the journal end" 30 caught_up
nt_stop_collector c1 TERM
end=$(nt_sql "$CP")
nt_log "journal segments: $(segments); checkpoint $end"

# ---- (b) ahead of the journal's end ------------------------------------------------------------
nt_sql "UPDATE needletrace.collector_checkpoints SET journal_pos = journal_pos + 1000 WHERE collector_id = 'it-c1'"
read -r -a before <<<"$(segments)"
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_for "readyz reports the checkpoint ahead" 30 stopped_with ahead
nt_log "readyz: $NT_LAST"
nt_expect_eq "mismatch metric" 1 "$(nt_metric db_checkpoint_mismatch)"
nt_simulate "$NT_TMP/sim2.json" --clinics 1 --devices 2 --events 400 --events-per-message 2 \
    --rate 400 --seed 802 --clinic-prefix mm2
nt_wait_for "sim2 received and journaled" 30 \
    test "$(nt_metric mqtt_messages_received_total)" -ge "$(nt_json "$NT_TMP/sim2.json" .messages_published)"
nt_hold "nothing committed while stopped" 3 nt_sql_eq "$((end + 1000))" "$CP"
nt_expect_eq "the error logged once" 1 "$(log_count "is beyond the journal's end $end")"
nt_expect_true "the log explains it and names both positions and the command" grep -q \
    "position $((end + 1000))) is beyond the journal's end $end: .*restored from an older copy.*needletrace journal accept" \
    "$NT_TMP/collector-c1.log"
nt_expect_true "no journal segment released (${#before[@]} before)" still_there "${before[@]}"
rc=0
out=$(accept --reason running 2>&1) || rc=$?
nt_expect_eq "accept exit code while the collector runs" 1 "$rc"
nt_expect_true "accept says the journal is in use ($out)" grep -q "in use by another collector" <<<"$out"
nt_stop_collector c1 TERM
nt_expect_eq "exit code after SIGTERM while stopped" 0 "$NT_EXIT_CODE"
nt_expect_true "exited within 10 s (${NT_EXIT_MS} ms)" test "$NT_EXIT_MS" -le 10000
nt_expect_eq "the mismatch is held in the checkpoint row" "ahead|$end" \
    "$(nt_sql "SELECT held_mismatch, held_end FROM needletrace.collector_checkpoints WHERE collector_id = 'it-c1'")"
# The journal has grown past the checkpoint meanwhile: after a restart it is still "ahead",
# never a place to resume (that would skip the records of [end, checkpoint)).
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_for "readyz still reports the checkpoint ahead after a restart" 30 stopped_with ahead
nt_expect_true "the log says it is held" grep -q "is beyond the journal's end $end: .* (found at .* and held since" \
    "$NT_TMP/collector-c1.log"
nt_stop_collector c1 TERM
out=$(accept --reason "journal restored from last week's snapshot") ||
    nt_fail "journal accept failed: $out"
printf '%s\n' "$out"
nt_expect_true "accept names the unaccounted range" grep -q \
    "unaccounted for: positions \[$end, $((end + 1000))) (1000 bytes)" <<<"$out"
nt_expect_eq "reset recorded" "1|ahead|$((end + 1000))|journal restored from last week's snapshot" \
    "$(nt_sql "SELECT count(*), min(mismatch), min(old_journal_pos), min(reason) FROM needletrace.checkpoint_resets")"
out=$(accept) || nt_fail "second journal accept failed: $out"
nt_expect_true "a second accept has nothing to do ($out)" grep -q "nothing to accept" <<<"$out"
nt_expect_eq "still one reset" 1 "$(nt_count checkpoint_resets)"
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_collector_ready c1
nt_wait_counts "$NT_TMP/sim0.json" "$NT_TMP/sim1.json" "$NT_TMP/sim2.json" -- 180
nt_check_no_duplicate_keys
nt_stop_collector c1 TERM

# ---- (c) behind the journal's start ------------------------------------------------------------
start=$(segments | awk '{ print $1 + 0 }')
nt_expect_true "some segments were released (journal start $start > 0)" test "$start" -gt 0
nt_sql "UPDATE needletrace.collector_checkpoints SET journal_pos = 0 WHERE collector_id = 'it-c1'"
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_for "readyz reports the checkpoint behind" 30 stopped_with behind
nt_expect_true "the log names the database restore" grep -q \
    "is behind the journal's oldest record $start: .*restored from a backup" "$NT_TMP/collector-c1.log"
nt_stop_collector c1 TERM
out=$(accept --reason "failover") || nt_fail "journal accept failed: $out"
printf '%s\n' "$out"
nt_expect_true "accept names the lost range" grep -q \
    "unaccounted for: positions \[0, $start) ($start bytes) were committed, then deleted" <<<"$out"
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_collector_ready c1
nt_wait_counts "$NT_TMP/sim0.json" "$NT_TMP/sim1.json" "$NT_TMP/sim2.json" -- 180
nt_stop_collector c1 TERM

# ---- (d) the journal directory replaced --------------------------------------------------------
rm -rf "$NT_TMP/journal-c1"
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_for "readyz reports another journal" 30 stopped_with other_journal
n=$(log_count 'belongs to another journal')
nt_restart_pg fast
nt_wait_for "the mismatch logged again after the reconnect" 60 \
    log_count_is "$((n + 1))" 'belongs to another journal'
nt_hold "and not in a loop" 3 log_count_is "$((n + 1))" 'belongs to another journal'
nt_wait_for "readyz reports another journal after the reconnect" 30 stopped_with other_journal
nt_stop_collector c1 TERM
out=$(accept --reason "journal volume lost") || nt_fail "journal accept failed: $out"
printf '%s\n' "$out"
nt_expect_true "accept says the old journal's rest is unaccounted for" grep -q \
    "unaccounted for: whatever journal [0-9a-f]* held beyond position" <<<"$out"
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim3.json" --clinics 1 --devices 2 --events 400 --events-per-message 2 \
    --rate 400 --seed 803 --clinic-prefix mm3
nt_wait_counts "$NT_TMP/sim0.json" "$NT_TMP/sim1.json" "$NT_TMP/sim2.json" "$NT_TMP/sim3.json" -- 180
nt_stop_collector c1 TERM

# ---- (e) inside a record -----------------------------------------------------------------------
nt_sql "UPDATE needletrace.collector_checkpoints SET journal_pos = journal_pos - 1 WHERE collector_id = 'it-c1'"
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_for "readyz reports a checkpoint not on a record" 30 stopped_with not_a_record
nt_stop_collector c1 TERM
out=$(accept --reason "test") || nt_fail "journal accept failed: $out"
nt_start_collector c1 "${SEGMENT[@]}"
nt_wait_collector_ready c1
nt_wait_counts "$NT_TMP/sim0.json" "$NT_TMP/sim1.json" "$NT_TMP/sim2.json" "$NT_TMP/sim3.json" -- 180
nt_check_no_duplicate_keys
nt_expect_eq "resets recorded" "ahead behind other_journal not_a_record" \
    "$(nt_sql "SELECT string_agg(mismatch, ' ' ORDER BY reset_id) FROM needletrace.checkpoint_resets")"
nt_finish
