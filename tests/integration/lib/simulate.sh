# shellcheck shell=bash
# shellcheck disable=SC2034 # NT_SIM_PID is read by the tests
# simulate.sh -- the simulated fleet (`needletrace simulate`) in the foreground or the
# background, and reading its JSON summary (the expected counts).
# Part of tests/integration/lib.sh.

# nt_simulate OUT_JSON ARGS...: runs `needletrace simulate ARGS` in the foreground; its JSON
# summary goes to OUT_JSON, its stderr to $NT_TMP/simulate.log.
nt_simulate() {
    local out=$1
    shift
    nt_log "simulate $*"
    "$NT_BIN" simulate "$@" >"$out" 2>>"$NT_TMP/simulate.log" ||
        nt_fail "needletrace simulate $* failed (exit $?)"
    jq -e . "$out" >/dev/null 2>&1 || nt_fail "simulate did not print a JSON object: $(head -c 500 "$out")"
    nt_log "simulate done: $(jq -c '{messages_published, duplicates_published, events_generated, elapsed_s, rate_msgs_per_s}' "$out")"
}

# nt_simulate_bg OUT_JSON ARGS...: the same in the background; sets NT_SIM_PID.
nt_simulate_bg() {
    local out=$1
    shift
    nt_log "simulate (background) $*"
    "$NT_BIN" simulate "$@" >"$out" 2>>"$NT_TMP/simulate.log" &
    NT_SIM_PID=$!
    NT_BG_PIDS+=("$NT_SIM_PID")
}

# nt_wait_simulate OUT_JSON [DEADLINE]: waits for the background simulate; checks its exit.
nt_wait_simulate() {
    local out=$1 deadline=${2:-300} rc=0
    nt_wait_for "simulate (pid $NT_SIM_PID) to finish" "$deadline" nt_pid_dead "$NT_SIM_PID"
    wait "$NT_SIM_PID" || rc=$?
    ((rc == 0)) || nt_fail "needletrace simulate failed (exit $rc)"
    jq -e . "$out" >/dev/null 2>&1 || nt_fail "simulate did not print a JSON object: $(head -c 500 "$out")"
    nt_log "simulate done: $(jq -c '{messages_published, duplicates_published, events_generated, elapsed_s, rate_msgs_per_s}' "$out")"
}

# nt_json FILE FILTER: one value from a simulate summary (jq -r).
nt_json() {
    jq -r "$2" "$1"
}

# nt_json_sum FILTER FILE...: the sum of an integer field over several summaries.
nt_json_sum() {
    local filter=$1
    shift
    jq -s "map($filter) | add" "$@"
}
