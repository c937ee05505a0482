#!/usr/bin/env bash
# run.sh -- the soak test (issue 8, point 9): the sanitizer (ASan + UBSan) build of the collector
# at half its measured maximum rate for N minutes against a real mosquitto and PostgreSQL; RSS
# and open file descriptors sampled every few seconds must stay flat after a warm-up, and no
# sanitizer may report anything (LeakSanitizer included, at the exit after SIGTERM).
#
#   tests/soak/run.sh [--minutes N] [--rate MSGS_PER_S] [--bin PATH] [--sample-s S]
#
#   --minutes N   how long the fleet publishes (default 30; ctest's smoke run uses 1)
#   --rate R      messages per second (5 events each); default: half the rate measured first
#   --bin PATH    a sanitizer build of needletrace; default build-asan/needletrace, configured
#                 and built as tests/run.sh does when it is missing
#   --sample-s S  seconds between samples (default 5)
#
# Tolerances after the warm-up (a quarter of the run, at most 5 minutes): RSS may grow by 8 MiB
# plus 5 %, open fds by 2. ASan's quarantine is bounded (quarantine_size_mb=16) so that freed
# memory it keeps does not read as growth. Exit 0 when everything holds; prints first/last/max.
set -euo pipefail

SOAK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SOAK_DIR/../.." && pwd)
MINUTES=30
RATE=""
BIN=""
SAMPLE_S=5

usage() {
    sed -n '7,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while (($#)); do
    case $1 in
    --minutes) MINUTES=${2:?} && shift ;;
    --rate) RATE=${2:?} && shift ;;
    --bin) BIN=${2:?} && shift ;;
    --sample-s) SAMPLE_S=${2:?} && shift ;;
    -h | --help) usage 0 ;;
    *) echo "soak: unknown option \"$1\"" >&2 && usage 2 ;;
    esac
    shift
done
[[ $MINUTES =~ ^[0-9]+$ && $MINUTES -ge 1 ]] || {
    echo "soak: --minutes must be a whole number of minutes, 1 or more" >&2
    exit 2
}

# The sanitizer build, as tests/run.sh configures it (without the fuzz targets).
soak_build() {
    local dir=$ROOT/build-asan
    if [[ ! -x $dir/needletrace ]]; then
        CC=clang cmake -S "$ROOT" -B "$dir" -DCMAKE_C_COMPILER=clang \
            -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNT_WERROR=ON -DNT_SANITIZE=ON >/dev/null
        cmake --build "$dir" --parallel "${JOBS:-1}" --target needletrace >/dev/null
    fi
    BIN=$dir/needletrace
}
[[ -n $BIN ]] || soak_build
grep -qa AddressSanitizer "$BIN" || {
    echo "soak: $BIN is not a sanitizer build (cmake -DNT_SANITIZE=ON)" >&2
    exit 2
}

# shellcheck disable=SC2034 # read by lib.sh
NT_TEST_NAME=soak
# shellcheck source=../integration/lib.sh
source "$SOAK_DIR/../integration/lib.sh"
nt_setup "$BIN"
# Reports go to files (the collector's stderr is a log file too): any file is a failure.
export ASAN_OPTIONS="log_path=$NT_TMP/asan:detect_leaks=1:abort_on_error=0:quarantine_size_mb=16"
export UBSAN_OPTIONS="log_path=$NT_TMP/ubsan:print_stacktrace=1:halt_on_error=1"
nt_start_pg
nt_start_broker
nt_migrate
nt_sql "UPDATE needletrace.settings SET value = '5 seconds' WHERE key = 'sequence_gap_after'"
nt_start_collector c1
nt_wait_collector_ready c1
PID=$(nt_collector_pid c1)
SIM=(--clinics 5 --devices 10 --events-per-message 5 --reuse-rate 0.01 --too-deep-rate 0.01
    --unsealed-rate 0.005 --malformed-rate 0.001)

# The maximum rate: 4,000 messages as fast as the broker takes them, timed until committed.
measure_rate() {
    local t0 ms
    t0=$(nt_now_ms)
    nt_simulate "$NT_TMP/burst.json" "${SIM[@]}" --events 20000 --seed 1
    nt_wait_for "the burst stored" 300 nt_sql_ge "$(($(nt_json "$NT_TMP/burst.json" \
        .expected.raw_messages) + $(nt_json "$NT_TMP/burst.json" .expected.quarantine)))" \
        "SELECT (SELECT count(*) FROM needletrace.raw_messages) +
                (SELECT count(*) FROM needletrace.quarantine)"
    ms=$(($(nt_now_ms) - t0))
    nt_wait_counts "$NT_TMP/burst.json" -- 300
    RATE=$((4000 * 1000 / ms / 2))
    ((RATE > 0)) || RATE=1
    nt_log "measured $((4000 * 1000 / ms)) messages/s (4,000 in $ms ms); soaking at half: $RATE/s"
}
[[ -n $RATE ]] || measure_rate

# sample: "seconds rss_kib fds" of the collector, appended to samples.txt.
sample() {
    local rss fds
    rss=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$PID/status")
    fds=$(find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    printf '%s %s %s\n' "$((SECONDS - T0))" "$rss" "$fds" >>"$NT_TMP/samples.txt"
}

T0=$SECONDS
DURATION=$((MINUTES * 60))
nt_simulate_bg "$NT_TMP/soak.json" "${SIM[@]}" --duration "$DURATION" --rate "$RATE" --seed 2
while nt_pid_alive "$NT_SIM_PID"; do
    nt_pid_alive "$PID" || nt_fail "the collector died during the soak"
    sample
    sleep "$SAMPLE_S"
done
sample
nt_wait_simulate "$NT_TMP/soak.json" 120
if [[ -f $NT_TMP/burst.json ]]; then
    nt_wait_counts "$NT_TMP/burst.json" "$NT_TMP/soak.json" -- 300
else
    nt_wait_counts "$NT_TMP/soak.json" -- 300
fi
nt_check_no_duplicate_keys
nt_stop_collector c1 TERM 30
nt_expect_eq "collector exit code after SIGTERM" 0 "$NT_EXIT_CODE"

# first / last / max, and growth after the warm-up
WARM=$((DURATION / 4 < 300 ? DURATION / 4 : 300))
read -r RSS_FIRST RSS_LAST RSS_MAX FD_FIRST FD_LAST FD_MAX RSS_W FD_W N <<<"$(awk -v w="$WARM" '
    NR == 1 { rf = $2; ff = $3 } { rl = $2; fl = $3; n++
      if ($2 > rm) rm = $2; if ($3 > fm) fm = $3
      if ($1 >= w && rw == "") { rw = $2; fw = $3 } }
    END { print rf, rl, rm, ff, fl, fm, rw, fw, n }' "$NT_TMP/samples.txt")"
printf '\nsoak: %s min at %s messages/s, %s samples every %s s, warm-up %s s\n' "$MINUTES" "$RATE" \
    "$N" "$SAMPLE_S" "$WARM"
printf '  %-8s %10s %10s %10s %14s\n' '' first last max after-warm-up
printf '  %-8s %10s %10s %10s %14s\n' 'RSS KiB' "$RSS_FIRST" "$RSS_LAST" "$RSS_MAX" "$RSS_W"
printf '  %-8s %10s %10s %10s %14s\n' 'open fds' "$FD_FIRST" "$FD_LAST" "$FD_MAX" "$FD_W"
printf '  events committed %s, messages %s\n' "$(nt_count events)" "$(nt_count raw_messages)"
nt_expect_true "RSS flat after the warm-up ($RSS_W -> $RSS_LAST KiB, tolerance 8 MiB + 5 %)" \
    test "$RSS_LAST" -le $((RSS_W + 8192 + RSS_W / 20))
nt_expect_true "open fds flat after the warm-up ($FD_W -> $FD_LAST, tolerance 2)" \
    test "$FD_LAST" -le $((FD_W + 2))
REPORTS=$(find "$NT_TMP" -maxdepth 1 \( -name 'asan.*' -o -name 'ubsan.*' \) -printf '%f ')
REPORTS=${REPORTS% }
nt_expect_eq "sanitizer report files" none "${REPORTS:-none}"
if [[ -n $REPORTS ]]; then
    head -n 40 "$NT_TMP"/asan.* "$NT_TMP"/ubsan.* 2>/dev/null || true
fi
nt_finish
