# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # R, the figures, is an associative array declared in run.sh
# scale.sh -- (i) scale-out: 1, 2 and 3 collector replicas on one shared subscription
# ($share/bench/..., NEEDLETRACE_MQTT_SHARE_GROUP) and one PostgreSQL; for each, simulate
# publishes BENCH_SCALE_EVENTS events in 10-event messages as fast as it can, timed as (c) is
# (simulate start -> commit of the run's last event). Figures in R[iN_*].
# Sourced by tests/bench/run.sh (after tests/integration/lib.sh, measure.sh and phases.sh).

SCALE_REPLICAS=(1 2 3) # the replica counts measured, in order (the first is the reference)

# phase_scale: one run per replica count, each in a fresh database needletrace with fresh
# replicas (own collector id, client id, journal dir and http port). BENCH_SCALE_EVENTS=0 skips.
phase_scale() {
    local n
    R[i_skipped]=0
    if ((SCALE_EVENTS == 0)); then
        R[i_skipped]=1
        return 0
    fi
    for n in "${SCALE_REPLICAS[@]}"; do
        scale__run "$n"
        R[i${n}_ratio]=$(f "${R[i${n}_events_s]} / ${R[i${SCALE_REPLICAS[0]}_events_s]}" 2)
    done
}

# scale__run N: N replicas, one run of SCALE_EVENTS events; sets R[iN_events_s] R[iN_msgs_s]
# R[iN_split] (events committed by each replica) and collect__figures' R[iN_*]. Stops the
# replicas and removes their journals.
scale__run() {
    local n=$1 i name sim=$NT_TMP/sim-scale$1.json prefix=scale$1 pid t0 t1 m0 m1 cpu0 cpu1
    local -a names=() cpids=() pgp=() split=()
    nt_log "(i) scale-out: $n replica(s) on \$share/bench, $SCALE_EVENTS events in 10-event messages"
    bench_fresh_db
    for ((i = 1; i <= n; i++)); do
        names+=("s${n}r$i")
        # shellcheck disable=SC2086 # COLLECTOR_ENV is a list of VAR=VALUE words
        nt_start_collector "s${n}r$i" NEEDLETRACE_MQTT_SHARE_GROUP=bench $COLLECTOR_ENV
    done
    for name in "${names[@]}"; do
        nt_wait_collector_ready "$name" 60
        cpids+=("$(nt_collector_pid "$name")")
    done
    checkpoint
    mapfile -t pgp < <(pg_pids)
    cpu0="$(cpu_s "${cpids[@]}") $(cpu_s "$NT_BROKER_PID") $(cpu_s "${pgp[@]}")"
    m0=$(machine_busy_s)
    t0=$(now_s)
    (
        rc=0
        "$NT_BIN" simulate --clinics "$CLINICS" --devices "$DEVICES" --events "$SCALE_EVENTS" \
            --events-per-message 10 --rate 0 --seed "$((300 + n))" --clinic-prefix "$prefix" \
            >"$sim" 2>>"$NT_TMP/simulate.log" || rc=$?
        times >"$sim.times"
        exit "$rc"
    ) &
    pid=$!
    NT_BG_PIDS+=("$pid")
    collect__wait_committed "$pid" "$sim" 0 "$prefix" "$(f "$t0 + 600")" "${names[@]}"
    t1=$(now_s)
    cpu1="$(cpu_s "${cpids[@]}") $(cpu_s "$NT_BROKER_PID") $(cpu_s "${pgp[@]}")"
    m1=$(machine_busy_s)
    collect__figures "i$n" "$prefix" "$sim" "$t0" "$t1" "$m1 - $m0" "$cpu0" "$cpu1" \
        "collectors ($n)"
    R[i${n}_msgs_s]=$(f "${R[i${n}_msgs]} / ${R[i${n}_s]}")
    R[i${n}_events_s]=$(f "${R[i${n}_events]} / ${R[i${n}_s]}")
    for name in "${names[@]}"; do
        split+=("$(metric db_events_total "$name" || echo '?')")
    done
    R[i${n}_split]=$(
        IFS=/
        printf '%s' "${split[*]}"
    )
    for name in "${names[@]}"; do
        bench_stop_collector "$name"
        rm -rf "$NT_TMP/journal-$name"
    done
}
