# shellcheck shell=bash
# shellcheck disable=SC2034 # FT_REPS, FT_LOSS_OK_CHUNKS... are read by measure.sh
# faults_disk.sh -- faults of the journal's disk: full, a torn tail, a flipped bit.
# Sourced by row.sh.

# ---- disk full ---------------------------------------------------------------------------------
# The journal on a 16 MiB tmpfs filled to the last byte (when mount works: root), else the
# LD_PRELOAD fault library's ENOSPC while a control file exists.
ft__disk_fill() {
    if [[ -n $FT_MOUNT ]]; then
        dd if=/dev/zero of="$FT_MOUNT/filler" bs=64k oflag=append conv=notrunc \
            >/dev/null 2>&1 || true
    else
        touch "$NT_TMP/disk-full"
    fi
}

ft__disk_free() {
    rm -f "$FT_MOUNT/filler" "$NT_TMP/disk-full"
}

# The check while the disk is full: refill what segment deletions freed, watch /readyz.
ft__disk_hold_check() {
    ft__disk_fill
    ft__watch_readyz
}

# fault_disk_full: the journal's disk fills (8 s short, 30 s long) while the fleet publishes: the
# collector must stay up, stop acknowledging, say so in /readyz and resume by itself.
fault_disk_full() {
    local dur pid how env=()
    dur=$(ft_pick 8 30)
    ft_begin
    mkdir -p "$NT_TMP/journal-c1"
    if mount -t tmpfs -o size=16m,mode=0700 ft-journal "$NT_TMP/journal-c1" 2>/dev/null; then
        FT_MOUNT=$NT_TMP/journal-c1
        how="a 16 MiB tmpfs filled up"
    else
        env=(LD_PRELOAD="$FT_FAULT_LIB" NTFAULT_ENOSPC_FILE="$NT_TMP/disk-full")
        how="ENOSPC from the fault library (no tmpfs: $(id -un))"
    fi
    ft_start_c1 NEEDLETRACE_JOURNAL_SEGMENT_BYTES=1MiB "${env[@]}"
    nt_wait_collector_ready c1
    pid=$(nt_collector_pid c1)
    ft_sim_bg --duration "$dur" --rate 100
    nt_wait_for "first events committed" 60 nt_sql_gt 0 "SELECT count(*) FROM needletrace.events"
    ft__disk_fill
    FT_READYZ_SEEN=""
    ft_hold_alive "$dur" ft__disk_hold_check
    ft__disk_free
    ft_fault_end
    ft_note "$how; readyz while full:$FT_READYZ_SEEN"
    [[ $FT_READYZ_SEEN == *503* ]] || ft_fail "/readyz never said not ready while the disk was full"
    ft_settle 180
    [[ $(nt_collector_pid c1) == "$pid" ]] || ft_fail "the collector was restarted"
    ft_finish_row disk_full
}

# ---- torn tail ---------------------------------------------------------------------------------
# fault_torn_tail: the fault library writes half of a seeded journal write (the 2nd to 6th) and
# kills the collector, as a power cut mid-write does: that write was never synced nor
# acknowledged, so the collector must cut the torn record at start-up and get the messages again
# from the broker.
fault_torn_tail() {
    local seg
    ft_begin
    ft_rand 2 6
    ft_note "torn at journal write $FT_RAND"
    ft_start_c1 LD_PRELOAD="$FT_FAULT_LIB" NTFAULT_TEAR_AT_JOURNAL_WRITE="$FT_RAND"
    nt_wait_collector_ready c1
    ft_sim_bg --events 4000 --rate 400
    nt_wait_collector_exit c1 60
    ((NT_EXIT_CODE == 137)) || ft_fail "the fault library did not kill the collector (exit $NT_EXIT_CODE)"
    seg=$(find "$NT_TMP/journal-c1" -name '*.ntj' | sort | tail -n 1)
    ft_note "newest segment: $("$NT_PY" "$FT_DIR/lib/ftjournal.py" tail "$seg")"
    ft_start_c1
    ft_fault_end
    ft_settle 120
    ft_note "start-up said: $(grep -iE 'torn|truncat' "$NT_TMP/collector-c1.log" | tail -n 1 | cut -c1-160)"
    ft_finish_row torn_tail
}

# ---- flipped bit -------------------------------------------------------------------------------
# fault_flipped_bit: every message committed, kill -9, one bit flipped in a record in the middle
# of the newest segment (valid records follow it), a chunk queued at the broker meanwhile. The
# collector must refuse to start, naming the segment; `journal salvage` + `journal accept`
# recover; the damaged record was committed before, so nothing is lost.
fault_flipped_bit() {
    local seg
    ft_begin
    ft_start_c1
    nt_wait_collector_ready c1
    ft_sim --events 3000
    nt_wait_for "every message committed" 60 ft__stored_ge "$(($(ft_expect .expected.raw_messages) +
        $(ft_expect .expected.quarantine)))"
    nt_stop_collector c1 KILL
    seg=$(find "$NT_TMP/journal-c1" -name '*.ntj' | sort | tail -n 1)
    ft_note "flipped in $(basename "$seg"): $("$NT_PY" "$FT_DIR/lib/ftjournal.py" flip "$seg" "$FT_SEED")"
    ft_sim --events 2000
    ft_start_c1
    if nt__wait_quiet 30 nt_pid_dead "$(nt_collector_pid c1)"; then
        nt_wait_collector_exit c1 5
        ft_note "refused to start (exit $NT_EXIT_CODE): $(grep -iE 'corrupt|crc|segment' \
            "$NT_TMP/collector-c1.log" | tail -n 1 | cut -c1-200)"
        grep -q "$(basename "$seg")" "$NT_TMP/collector-c1.log" ||
            ft_fail "the refusal does not name the segment $(basename "$seg")"
        ft__salvage
    else
        ft_fail "started on a segment with a flipped bit (no refusal)"
    fi
    ft_fault_end
    ft_settle 120
    ft_finish_row flipped_bit
}

# ft__salvage: `needletrace journal salvage` then `journal accept` on c1's journal, then c1.
ft__salvage() {
    ft_has_journal_cmd || {
        ft_pending "needletrace journal salvage/accept are not on main yet"
        return 0
    }
    local dir=$NT_TMP/journal-c1
    rm -rf "$dir.salvaged"
    if NEEDLETRACE_JOURNAL_DIR="$dir" NEEDLETRACE_COLLECTOR_ID=it-c1 \
        "$NT_BIN" journal salvage --out "$dir.salvaged" >>"$NT_TMP/journal-cmd.log" 2>&1; then
        ft_note "journal salvage: $(grep -iE 'copied|lost' "$NT_TMP/journal-cmd.log" | head -n 2 |
            tr '\n' ' ' | cut -c1-200)"
        # The operator's part: the salvaged journal takes the damaged one's place.
        mv "$dir" "$dir.damaged" && mv "$dir.salvaged" "$dir"
    else
        ft_fail "needletrace journal salvage failed: $(tail -n 1 "$NT_TMP/journal-cmd.log")"
    fi
    ft_journal_accept || ft_start_c1
}
