# shellcheck shell=bash
# shellcheck disable=SC2034 # FT_REPS, FT_LOSS_OK_CHUNKS... are read by measure.sh
# faults_db.sh -- faults of the database: PostgreSQL down, PostgreSQL slow (a lock held on a
# table the batch needs), the database restored from an earlier dump. Sourced by row.sh.

# ft__readyz_code: the HTTP status of c1's /readyz (000 when it does not answer).
ft__readyz_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:${NT_CHTTP[c1]}/readyz" ||
        true
}

# Records in FT_READYZ_SEEN every /readyz status seen (ft_hold_alive's check).
ft__watch_readyz() {
    local code
    code=$(ft__readyz_code)
    [[ " $FT_READYZ_SEEN " == *" $code "* ]] || FT_READYZ_SEEN="$FT_READYZ_SEEN $code"
}

# fault_pg_down: PostgreSQL stops (10 s short, 60 s long) while the fleet publishes.
fault_pg_down() {
    local dur pid
    dur=$(ft_pick 10 60)
    ft_begin
    ft_start_c1
    nt_wait_collector_ready c1
    pid=$(nt_collector_pid c1)
    ft_sim_bg --duration "$((dur - 2))" --rate 100
    nt_wait_for "first events committed" 60 nt_sql_gt 0 "SELECT count(*) FROM needletrace.events"
    nt_stop_pg fast
    FT_READYZ_SEEN=""
    ft_hold_alive "$dur" ft__watch_readyz
    nt_start_pg
    ft_fault_end
    ft_note "readyz during the outage:$FT_READYZ_SEEN"
    ft_settle 180
    [[ $(nt_collector_pid c1) == "$pid" ]] || ft_fail "the collector was restarted"
    ft_finish_row pg_down
}

# fault_pg_slow: a session holds events (EXCLUSIVE: reads go on, every insert waits) for 8 s
# short, 30 s long, while the fleet publishes.
fault_pg_slow() {
    local dur pid
    dur=$(ft_pick 8 30)
    ft_begin
    ft_start_c1
    nt_wait_collector_ready c1
    pid=$(nt_collector_pid c1)
    ft_sim_bg --duration "$dur" --rate 100
    nt_wait_for "first events committed" 60 nt_sql_gt 0 "SELECT count(*) FROM needletrace.events"
    ft_lock events "$dur"
    FT_READYZ_SEEN=""
    ft_hold_alive "$dur" ft__watch_readyz
    nt__wait_quiet 30 nt_pid_dead "$FT_LOCK_PID" || ft_unlock
    ft_fault_end
    ft_note "readyz while the lock was held:$FT_READYZ_SEEN"
    ft_settle 180
    [[ $(nt_collector_pid c1) == "$pid" ]] || ft_fail "the collector was restarted"
    ft_finish_row pg_slow
}

# ft__restore DUMP: drops the database (closing the collector's connections) and restores DUMP.
ft__restore() {
    nt_psql postgres "DROP DATABASE needletrace WITH (FORCE)" >/dev/null
    nt_psql postgres "CREATE DATABASE needletrace" >/dev/null
    pg_restore -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -d needletrace --exit-on-error "$1" \
        >>"$NT_TMP/restore.log" 2>&1 || nt_fail "pg_restore failed"
}

# Lines of c1's log that explain a stop because of the checkpoint and the journal.
ft__checkpoint_error() {
    grep -iE 'checkpoint.*(behind|before|older|ahead|beyond|another journal).*journal|journal.*(ahead|after|behind).*checkpoint' \
        "$NT_TMP/collector-c1.log" | tail -n 1
}

# ft_journal_accept: the operator's `needletrace journal accept` for c1's journal (the collector
# stopped while it runs). 0 when it ran, 1 (row pending) when the command is not there yet.
ft_journal_accept() {
    ft_has_journal_cmd || {
        ft_pending "needletrace journal accept is not on main yet"
        return 1
    }
    [[ -z $(nt_collector_pid c1) ]] || ft_term_c1 "before journal accept"
    if NEEDLETRACE_JOURNAL_DIR="$NT_TMP/journal-c1" NEEDLETRACE_COLLECTOR_ID=it-c1 \
        "$NT_BIN" journal accept >>"$NT_TMP/journal-cmd.log" 2>&1; then
        ft_note "journal accept: $(tail -n 1 "$NT_TMP/journal-cmd.log")"
    else
        ft_fail "needletrace journal accept failed: $(tail -n 1 "$NT_TMP/journal-cmd.log")"
    fi
    ft_start_c1
}

# fault_db_restore: chunk A committed, pg_dump, chunk B committed and its journal segments
# released (64 KiB segments), drop + restore, chunk C published. The collector must stop
# ingesting with an error about the checkpoint behind the journal start; then the operator's
# `journal accept` resumes it. B (acknowledged, gone from both) is an expected, reported loss.
fault_db_restore() {
    local b stored
    ft_begin
    ft_start_c1 NEEDLETRACE_JOURNAL_SEGMENT_BYTES=64KiB
    nt_wait_collector_ready c1
    ft_sim --events 2000
    nt_wait_for "chunk A committed" 60 ft__stored_ge "$(($(ft_expect .expected.raw_messages) +
        $(ft_expect .expected.quarantine)))"
    pg_dump -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -Fc -f "$NT_TMP/a.dump" needletrace
    ft_sim --events 4000
    b=$FT_CHUNK
    nt_wait_for "chunk B committed" 60 ft__stored_ge "$(($(ft_expect .expected.raw_messages) +
        $(ft_expect .expected.quarantine)))"
    ft__restore "$NT_TMP/a.dump"
    ft_fault_end
    FT_LOSS_OK_CHUNKS=("$b")
    ft_sim_bg --events 2000
    if nt__wait_quiet 30 ft__checkpoint_error; then
        ft_note "the collector said: $(ft__checkpoint_error | cut -c1-200)"
        stored=$(ft__stored)
        ft_hold_alive 3
        [[ $(ft__stored) == "$stored" ]] || ft_fail "kept ingesting after reporting the mismatch"
        ft_journal_accept || true
    else
        ft_fail "no error about the checkpoint behind the journal start within 30 s"
    fi
    ft_settle 120
    ft_finish_row db_restore
}

# fault_db_restore_replay: the same restore while the journal still covers chunk B (64 MiB
# segments, none released): the collector replays B by itself; nothing is lost.
fault_db_restore_replay() {
    ft_begin
    ft_start_c1
    nt_wait_collector_ready c1
    ft_sim --events 2000
    nt_wait_for "chunk A committed" 60 ft__stored_ge "$(($(ft_expect .expected.raw_messages) +
        $(ft_expect .expected.quarantine)))"
    pg_dump -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -Fc -f "$NT_TMP/a.dump" needletrace
    ft_sim --events 4000
    nt_wait_for "chunk B committed" 60 ft__stored_ge "$(($(ft_expect .expected.raw_messages) +
        $(ft_expect .expected.quarantine)))"
    ft__restore "$NT_TMP/a.dump"
    ft_fault_end
    ft_sim_bg --events 2000
    ft_settle 120
    ft_finish_row db_restore_replay
}
