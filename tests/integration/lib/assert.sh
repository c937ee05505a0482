# shellcheck shell=bash
# shellcheck disable=SC2034 # NT_EXIT_CODE, NT_EXIT_MS are read by the tests
# assert.sh -- checks that print their figures and are tallied (nt_expect_*), the sanitizer
# check of the logs, and nt_finish, which ends every test.
# Part of tests/integration/lib.sh.

NT_FAILS=0
NT_CHECKS=0

# ---- assertions ------------------------------------------------------------------------------
# nt_expect_eq LABEL EXPECTED ACTUAL: prints the check with its figures; a mismatch is
# counted (the test goes on, so that every figure is printed) and fails the test at the end.
nt_expect_eq() {
    NT_CHECKS=$((NT_CHECKS + 1))
    if [[ "$2" == "$3" ]]; then
        printf 'ok   %s: %s\n' "$1" "$2"
    else
        NT_FAILS=$((NT_FAILS + 1))
        printf 'FAIL %s: expected %s, got %s\n' "$1" "$2" "$3"
    fi
}

# nt_expect_true LABEL COMMAND...: the command must succeed.
nt_expect_true() {
    local label=$1
    shift
    NT_CHECKS=$((NT_CHECKS + 1))
    if "$@"; then
        printf 'ok   %s\n' "$label"
    else
        NT_FAILS=$((NT_FAILS + 1))
        printf 'FAIL %s\n' "$label"
    fi
}

# nt_check_logs_clean: no sanitizer report in any log of this test.
nt_check_logs_clean() {
    local hits
    hits=$(grep -lE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|ThreadSanitizer' \
        "$NT_TMP"/*.log 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ') || true
    hits=${hits% }
    nt_expect_eq "sanitizer reports in the logs" none "${hits:-none}"
}

# Ends the test: stops the collectors still running with SIGTERM (each must exit 0 within
# 10 s: the shutdown contract, and where the sanitizers report leaks), checks the logs for
# sanitizer reports, prints the tally and exits 1 if any check failed.
nt_finish() {
    local name
    for name in "${!NT_CPID[@]}"; do
        nt_stop_collector "$name" TERM 20
        nt_expect_eq "collector $name exit code after SIGTERM" 0 "$NT_EXIT_CODE"
        nt_expect_true "collector $name exited within 10 s (${NT_EXIT_MS} ms)" \
            test "$NT_EXIT_MS" -le 10000
    done
    nt_check_logs_clean
    if ((NT_FAILS > 0)); then
        nt_log "$NT_FAILS of $NT_CHECKS checks FAILED"
        exit 1
    fi
    nt_log "all $NT_CHECKS checks passed"
    exit 0
}
