#!/usr/bin/env bash
# test_journal_cli.sh -- a damaged journal, end to end with the real binary. A byte flipped in the
# first record of a segment (valid records after it) is corruption: `needletrace run` refuses to
# start (exit 1, the message names the segment, the offset and the salvage command) and changes
# nothing; `journal check` exits 1 and names it; `journal salvage` copies every other record to
# a new journal that `check` passes and that a collector opens and replays without doubling a
# row (a collector with no checkpoint yet: the old one's checkpoint belongs to the old journal
# id, see `journal accept`). A page of zeros in a copy of it (an unwritten page after a power
# cut) is no corruption: `check` exits 0 and says the collector cuts there. `check` refuses beside a running collector; a full disk at start-up
# says so and waits for room instead of exiting (when this runs as root and can mount a small
# tmpfs in its own mount namespace).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

# flip_byte FILE OFFSET: xors one byte of FILE with 0x01, in place.
flip_byte() {
    local b
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    # shellcheck disable=SC2059 # the format is the octal escape of the new byte
    printf "$(printf '\\%03o' $((b ^ 1)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# digest DIR: names and contents of every file in DIR (to prove it unchanged).
digest() {
    (cd "$1" && sha256sum -- *) | sha256sum | cut -c1-16
}

# run_cmd OUT_FILE COMMAND...: runs it (at most 60 s), output to OUT_FILE; prints the exit code.
run_cmd() {
    local out=$1 rc=0
    shift
    timeout 60 "$@" >"$out" 2>&1 || rc=$?
    printf '%s\n' "$rc"
}

# expect_line LABEL FILE FIXED_STRING: FILE has a line containing the string.
expect_line() {
    nt_expect_true "$1 ($(grep -m1 -F -- "$3" "$2" || printf 'no line with "%s" in %s: %s' "$3" \
        "$(basename "$2")" "$(head -c 600 "$2")"))" grep -qF -- "$3" "$2"
}

nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 4 --events 2000 --events-per-message 5 \
    --malformed-rate 0.05 --seed 808
nt_wait_counts "$NT_TMP/sim.json" -- 300
read -r events raw quarantine <<<"$(nt_counts)"
nt_stop_collector c1
nt_expect_eq "collector c1 exit code after SIGTERM" 0 "$NT_EXIT_CODE"

# ---- damage: the first record of the journal's largest segment ---------------------------------
jdir=$NT_TMP/journal-c1
seg=$(find "$jdir" -name '*.ntj' -printf '%s %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)
name=$(basename "$seg")
first_len=$(($(od -An -tu4 -j32 -N4 "$seg" | tr -d ' ') + 8))
nt_log "flipping a bit in the first record ($first_len bytes) of $name ($(stat -c %s "$seg") bytes)"
flip_byte "$seg" 40 # its receive time: the record's CRC no longer matches
before=$(digest "$jdir")

# ---- run refuses ---------------------------------------------------------------------------------
rc=$(run_cmd "$NT_TMP/run-corrupt.log" env NEEDLETRACE_JOURNAL_DIR="$jdir" \
    NEEDLETRACE_COLLECTOR_ID=it-c1 "$NT_BIN" run)
nt_expect_eq "run on the corrupt journal: exit code" 1 "$rc"
expect_line "run names the segment" "$NT_TMP/run-corrupt.log" "$name"
expect_line "run names the offset and the reason" "$NT_TMP/run-corrupt.log" \
    "at offset 32: record checksum mismatch"
expect_line "run names the salvage command" "$NT_TMP/run-corrupt.log" \
    "needletrace journal salvage --journal-dir $jdir --out NEWDIR"
nt_expect_eq "the refused journal is unchanged" "$before" "$(digest "$jdir")"

# ---- check ---------------------------------------------------------------------------------------
rc=$(run_cmd "$NT_TMP/check-corrupt.log" "$NT_BIN" journal check --journal-dir "$jdir")
cat "$NT_TMP/check-corrupt.log"
nt_expect_eq "journal check on the corrupt journal: exit code" 1 "$rc"
expect_line "check names the segment as damaged" "$NT_TMP/check-corrupt.log" "$name"
expect_line "check names the offset and the bytes unreadable" "$NT_TMP/check-corrupt.log" \
    "problem at offset 32: record checksum mismatch; $first_len bytes unreadable"
expect_line "check says it is corrupt" "$NT_TMP/check-corrupt.log" "result: CORRUPT"
valid=$(sed -n 's/^total: \([0-9]*\) valid records.*/\1/p' "$NT_TMP/check-corrupt.log")
nt_expect_true "check counts the valid records ($valid)" test "${valid:-0}" -gt 0
nt_expect_eq "journal check leaves the journal unchanged" "$before" "$(digest "$jdir")"

# ---- salvage -------------------------------------------------------------------------------------
new=$NT_TMP/journal-c2 # the journal of collector c2, below
rc=$(run_cmd "$NT_TMP/salvage.log" "$NT_BIN" journal salvage --journal-dir "$jdir" --out "$new")
cat "$NT_TMP/salvage.log"
nt_expect_eq "journal salvage: exit code" 0 "$rc"
expect_line "salvage reports the records copied and the bytes lost" "$NT_TMP/salvage.log" \
    "copied $valid records ("
expect_line "salvage reports the bytes lost" "$NT_TMP/salvage.log" "lost $first_len bytes"
expect_line "salvage reports the range lost" "$NT_TMP/salvage.log" \
    "bytes 32 to $((32 + first_len)) of the file ($first_len bytes): record checksum mismatch"
expect_line "salvage tells to accept the new journal" "$NT_TMP/salvage.log" \
    "needletrace journal accept"
nt_expect_eq "journal salvage leaves the old journal unchanged" "$before" "$(digest "$jdir")"
rc=$(run_cmd "$NT_TMP/salvage-again.log" "$NT_BIN" journal salvage --journal-dir "$jdir" \
    --out "$new")
nt_expect_eq "journal salvage into a directory that exists: exit code" 2 "$rc"
expect_line "salvage refuses a directory that exists" "$NT_TMP/salvage-again.log" \
    "does not exist yet"

rc=$(run_cmd "$NT_TMP/check-new.log" "$NT_BIN" journal check --journal-dir "$new")
cat "$NT_TMP/check-new.log"
nt_expect_eq "journal check on the salvaged journal: exit code" 0 "$rc"
expect_line "the salvaged journal is clean" "$NT_TMP/check-new.log" "result: clean"
expect_line "the salvaged journal holds every valid record" "$NT_TMP/check-new.log" \
    "total: $valid valid records"
new_end=$(sed -n 's/^copied [0-9]* records (\([0-9]*\) bytes).*/\1/p' "$NT_TMP/salvage.log")

# ---- an unwritten page after a power cut (a copy): check exits 0, the collector would cut there --
pc=$NT_TMP/journal-powercut
cp -a "$new" "$pc"
pcseg=$(find "$pc" -name '*.ntj' -printf '%s %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)
if (($(stat -c %s "$pcseg") >= 16384)); then
    dd if=/dev/zero of="$pcseg" bs=4096 seek=2 count=1 conv=notrunc status=none # file page 2
    rc=$(run_cmd "$NT_TMP/check-powercut.log" "$NT_BIN" journal check --journal-dir "$pc")
    cat "$NT_TMP/check-powercut.log"
    nt_expect_eq "journal check on an unwritten page after a power cut: exit code" 0 "$rc"
    expect_line "check says the collector cuts at the unwritten page" \
        "$NT_TMP/check-powercut.log" \
        "is all zeros (unwritten page after a power cut: the collector cuts here at start)"
    expect_line "check names the page" "$NT_TMP/check-powercut.log" \
        "the page at offset 8192 is all zeros"
    expect_line "check's result is the unwritten page" "$NT_TMP/check-powercut.log" \
        "result: unwritten page after a power cut in journal segment"
else
    nt_log "skipped the unwritten page: the salvaged segment is shorter than 16 KiB"
fi

# ---- a collector opens the salvaged journal and replays it: nothing doubled --------------------
nt_start_collector c2
nt_wait_collector_ready c2
rc=$(run_cmd "$NT_TMP/check-running.log" "$NT_BIN" journal check --journal-dir "$new")
nt_expect_eq "journal check beside a running collector: exit code" 1 "$rc"
expect_line "check refuses beside a running collector" "$NT_TMP/check-running.log" \
    "a collector is running on it"
nt_wait_for "collector c2 replayed the salvaged journal (checkpoint at $new_end)" 120 nt_sql_ge \
    "$new_end" "SELECT coalesce(max(journal_pos), 0) FROM needletrace.collector_checkpoints
                WHERE collector_id = 'it-c2'"
nt_wait_totals "$events" "$raw" "$quarantine" 60
nt_check_no_duplicate_keys
nt_stop_collector c2
nt_expect_eq "collector c2 exit code after SIGTERM" 0 "$NT_EXIT_CODE"

# ---- a full disk at start-up: the fresh segment cannot be created --------------------------------
if ((EUID == 0)) && command -v unshare >/dev/null && unshare -m true 2>/dev/null; then
    full=$NT_TMP/full
    mkdir -p "$full"
    kb=$(($(du -sk "$new" | cut -f1) + 64))
    # shellcheck disable=SC2016 # expanded by the inner shell
    rc=$(run_cmd "$NT_TMP/run-full.log" unshare -m bash -c '
        mount -t tmpfs -o size="$1"k tmpfs "$2" && cp -a "$3" "$2/journal" &&
        { dd if=/dev/zero of="$2/fill" bs=4k status=none 2>/dev/null || true; } &&
        env NEEDLETRACE_JOURNAL_DIR="$2/journal" NEEDLETRACE_COLLECTOR_ID=it-c3 \
            NEEDLETRACE_HTTP_LISTEN=off timeout --preserve-status -s TERM 4 "$4" run' \
        _ "$kb" "$full" "$new" "$NT_BIN")
    # A full disk is backpressure, not a crash loop: it starts, says so, waits for room, and
    # stops cleanly on SIGTERM (4 s later).
    nt_expect_eq "run with the journal's disk full: stays up until SIGTERM, exit code" 0 "$rc"
    expect_line "run says the disk is full" "$NT_TMP/run-full.log" \
        "the file system of the journal is full"
    expect_line "run waits for room instead of exiting" "$NT_TMP/run-full.log" \
        "the journal cannot be written"
else
    nt_log "skipped the full-disk start-up: it needs root and unshare -m (a tmpfs of its own)"
fi
nt_finish
