#!/usr/bin/env bash
# test_valgrind_collector.sh -- the collector itself under valgrind (memcheck): a fleet with
# duplicates, malformed and spoofed messages and rule violations, a database restart and a
# broker restart, then SIGTERM. valgrind must report no error and no definite leak, and the
# database must hold exactly the simulator's counts. A sanitizer build cannot run under
# valgrind: with one, the test reports itself skipped (exit 77).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

# (grep on the file itself: `nm | grep -q` would fail under pipefail when grep exits early)
if grep -qa __asan_init "$NT_BIN"; then
    nt_log "skipped: $NT_BIN is a sanitizer build (the gcc build runs this test)"
    exit 77
fi
command -v valgrind >/dev/null || nt_fail "valgrind is not installed"

nt_start_pg
nt_start_broker
nt_migrate
nt_sql "INSERT INTO needletrace.recalled_lots (gtin, lot) VALUES ('07612345000121', 'RCL-VG');
        UPDATE needletrace.settings SET value = '2 seconds' WHERE key = 'sequence_gap_after'" >/dev/null
nt_start_collector c1 valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --track-origins=yes --quiet
nt_wait_collector_ready c1 180
nt_expect_true "the collector runs under valgrind ($(readlink "/proc/$(nt_collector_pid c1)/exe"))" \
    bash -c "readlink /proc/$(nt_collector_pid c1)/exe | grep -q memcheck"

nt_simulate "$NT_TMP/sim1.json" --clinics 2 --devices 4 --events 3000 --events-per-message 5 \
    --seed 707 --duplicate-rate 0.1 --malformed-rate 0.03 --spoof-rate 0.03 --reuse-rate 0.1 \
    --expired-rate 0.05 --unsealed-rate 0.05 --recalled-rate 0.05 --too-deep-rate 0.05 \
    --no-cartridge-rate 0.05 --recalled-gtin 07612345000121 --recalled-lot RCL-VG
nt_wait_counts "$NT_TMP/sim1.json" -- 240

# Connection loss paths: the database and the broker go away and come back.
nt_restart_pg fast
nt_restart_broker
nt_wait_collector_ready c1 180
nt_simulate "$NT_TMP/sim2.json" --clinics 2 --devices 4 --events 2000 --events-per-message 5 \
    --seed 708 --too-deep-rate 0.1
nt_wait_counts "$NT_TMP/sim1.json" "$NT_TMP/sim2.json" -- 240
nt_check_no_duplicate_keys
want=$(($(nt_json "$NT_TMP/sim1.json" .expected.alerts) + $(nt_json "$NT_TMP/sim2.json" .expected.alerts)))
nt_wait_for "alerts raised ($want)" 120 nt_sql_eq "$want" 'SELECT count(*) FROM needletrace.alerts'

# Under valgrind the shutdown takes longer than the 10 s of a native build.
nt_stop_collector c1 TERM 120
nt_expect_eq "collector exit code under valgrind (99 = valgrind found errors)" 0 "$NT_EXIT_CODE"
if ((NT_EXIT_CODE != 0)); then
    grep -E '^==[0-9]+==' "$NT_TMP/collector-c1.log" | head -n 60 >&2 || true
fi
nt_finish
