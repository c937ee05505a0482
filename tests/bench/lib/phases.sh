# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # R, the figures, is an associative array declared in run.sh
# phases.sh -- the measured phases but the latency run: the machine before the start, (a) broker
# drain, (b) PostgreSQL COPY, (c) the collector's throughput (with its time per stage) and (e)
# its peak RSS; and the two runs they are made of, bench_drain and bench_collect. Each stores
# its figures in R.
# Sourced by tests/bench/run.sh (after tests/integration/lib.sh and measure.sh).

# A function bench_collect calls, when set, right after it started simulate, with the
# collector's pid and the start time (phase_soak samples the collector's memory with it).
COLLECT_DURING=""

# phase_machine: how busy the machine is before the start; the disk's fdatasync latency.
phase_machine() {
    local idle0 idle1
    idle0=$(machine_busy_s)
    sleep 1
    idle1=$(machine_busy_s)
    R[busy_before]=$(f "100 * ($idle1 - $idle0)")
    nt_log "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), busy ${R[busy_before]}% before the start"
    if cond "${R[busy_before]} > 20"; then
        nt_log "WARNING: other processes use ${R[busy_before]}% CPU: the figures will be low and noisy"
    fi
    R[fsync]=$("$TOOL" fsync --dir "$NT_TMP" --count 200 --bytes 4096)
}

# ---- (a) broker drain ------------------------------------------------------------------------
phase_drain() {
    nt_log "(a) broker drain: $EVENTS_1 1-event messages"
    bench_drain a1 "$EVENTS_1" 1 101
    nt_log "(a) broker drain: $EVENTS_50 events in 50-event messages (dumped for the COPY runs)"
    bench_drain a50 "$EVENTS_50" 50 102 "$NT_TMP/copy.dump"
}

# bench_drain KEY EVENTS EPM SEED [DUMP]: simulate publishes EVENTS in EPM-event messages to a
# subscriber that only counts. Sets R[KEY_msgs_s] R[KEY_events_s] R[KEY_msgs] R[KEY_span]
# R[KEY_cpu].
bench_drain() {
    local key=$1 events=$2 epm=$3 seed=$4 dump=${5:-}
    local out=$NT_TMP/drain-$3.json sim=$NT_TMP/sim-drain-$3.json n pid rc=0
    # simulate fills every message with epm events (checked against its summary below).
    n=$(((events + epm - 1) / epm))
    "$TOOL" count --port "$NT_BROKER_PORT" --count "$n" --timeout 300 >"$out" \
        2>"$NT_TMP/drain-$epm.err" &
    pid=$!
    NT_BG_PIDS+=("$pid")
    nt_wait_for "counting subscriber ready" 30 grep -qx ready "$out"
    local b0 m0 t0 wall
    b0=$(cpu_s "$NT_BROKER_PID")
    m0=$(machine_busy_s)
    t0=$(now_s)
    (
        rc=0
        "$NT_BIN" simulate --clinics "$CLINICS" --devices "$DEVICES" --events "$events" \
            --events-per-message "$epm" --rate 0 --seed "$seed" --clinic-prefix "drain$epm" \
            ${dump:+--dump "$dump"} >"$sim" 2>>"$NT_TMP/simulate.log" || rc=$?
        times >"$sim.times"
        exit "$rc"
    ) || nt_fail "needletrace simulate failed (exit $?)"
    [[ $(jq -r .messages_published "$sim") == "$n" ]] ||
        nt_fail "simulate published $(jq -r .messages_published "$sim") messages, expected $n"
    wait "$pid" || rc=$?
    ((rc == 0)) || nt_fail "bench_tool count failed: $(cat "$NT_TMP/drain-$epm.err")"
    local m1 c_sim c_mq c_sub
    m1=$(machine_busy_s)
    wall=$(f "$(now_s) - $t0" 3)
    c_sim=$(times_s "$sim.times")
    c_mq=$(f "$(cpu_s "$NT_BROKER_PID") - $b0" 3)
    c_sub=$(tail -n 1 "$out" | jq -r .cpu_s)
    R[${key}_cpu]="simulate $(pct "$c_sim" "$wall"), mosquitto $(pct "$c_mq" "$wall"), subscriber $(pct "$c_sub" "$wall"); $(others "$m1 - $m0 - $c_sim - $c_mq - $c_sub" "$wall")"
    R[${key}_msgs]=$n
    R[${key}_msgs_s]=$(tail -n 1 "$out" | jq -r .msgs_per_s)
    R[${key}_span]=$(tail -n 1 "$out" | jq -r .first_to_last_s)
    R[${key}_events_s]=$(f "${R[${key}_msgs_s]} * $(jq -r .expected.events "$sim") / $n")
}

# ---- (b) PostgreSQL COPY ---------------------------------------------------------------------
# phase_copy: the events dumped by the 50-event drain run, by binary COPY into fresh databases:
# all in one transaction (R[b1]), and shaped like the collector's transactions (R[b2]).
phase_copy() {
    nt_log "(b) binary COPY of the $EVENTS_50 dumped events into fresh databases"
    bench_migrate_db bench_copy
    bench_migrate_db bench_copy_batched
    checkpoint
    R[b1]=$("$TOOL" copy --conninfo "host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=bench_copy" \
        --dump "$NT_TMP/copy.dump") || nt_fail "bench_tool copy failed"
    checkpoint
    R[b2]=$("$TOOL" copy --conninfo "host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=bench_copy_batched" \
        --dump "$NT_TMP/copy.dump" --raw --batch-events 5000 --batch-bytes 1048576) ||
        nt_fail "bench_tool copy --raw --batch-events failed"
    R[b_events_s]=$(jq -r .events_per_s <<<"${R[b1]}")
    rm -f "$NT_TMP/copy.dump"
    nt_psql postgres "DROP DATABASE bench_copy" >/dev/null
    nt_psql postgres "DROP DATABASE bench_copy_batched" >/dev/null
}

# ---- (c) the collector -----------------------------------------------------------------------
# phase_collector: starts the collector (it runs until phase_rss), then one 1-event and one
# 50-event run through it.
phase_collector() {
    local k
    nt_migrate
    # shellcheck disable=SC2086 # COLLECTOR_ENV is a list of VAR=VALUE words
    nt_start_collector bench $COLLECTOR_ENV
    nt_wait_collector_ready bench 60
    nt_log "(c) collector: $EVENTS_1 1-event messages"
    bench_collect c1 "$EVENTS_1" 1 201 bench1 0
    nt_log "(c) collector: $EVENTS_50 events in 50-event messages"
    bench_collect c50 "$EVENTS_50" 50 202 bench50 0
    for k in c1 c50; do
        R[${k}_msgs_s]=$(f "${R[${k}_msgs]} / ${R[${k}_s]}")
        R[${k}_events_s]=$(f "${R[${k}_events]} / ${R[${k}_s]}")
    done
}

# bench_collect KEY EVENTS EPM SEED PREFIX RATE [SIMULATE_ARG...]: runs simulate (--rate RATE,
# 0 = as fast as it can; the extra arguments too, e.g. violation rates) against the running
# collector and waits until all of its events are committed. Sets R[KEY_events] R[KEY_msgs]
# R[KEY_s] (simulate start to the commit of the run's last event), R[KEY_pub_s],
# R[KEY_sim_rate], R[KEY_cpu] (per process), R[KEY_us_*] (CPU us per event per process) and
# R[KEY_st_*] (the collector's time per stage, us per event; stage_figures).
bench_collect() {
    local key=$1 events=$2 epm=$3 seed=$4 prefix=$5 rate=$6 sim=$NT_TMP/sim-$5.json
    shift 6
    local t0 t1 base pid cpid bpid pgp=() m0 m1 cpu0 cpu1 backend st0 st1
    cpid=$(nt_collector_pid bench)
    bpid=$NT_BROKER_PID
    base=$(metric db_events_total) ||
        nt_fail "could not read needletrace_db_events_total from the collector's /metrics"
    checkpoint
    mapfile -t pgp < <(pg_pids)
    st0=$(stage_snapshot bench)
    cpu0=$(collect__cpu "$cpid" "$bpid" "${pgp[@]}")
    if [[ $PERF == 1 && $key != soak ]]; then
        backend=$(nt_sql "SELECT pid FROM pg_stat_activity WHERE datname = 'needletrace'
                            AND backend_type = 'client backend' AND pid <> pg_backend_pid()
                          LIMIT 1")
        perf_start "$prefix" "$cpid" "$bpid" ${backend:+"$backend"}
    fi
    m0=$(machine_busy_s)
    t0=$(now_s)
    (
        rc=0
        "$NT_BIN" simulate --clinics "$CLINICS" --devices "$DEVICES" --events "$events" \
            --events-per-message "$epm" --rate "$rate" --seed "$seed" --clinic-prefix "$prefix" \
            "$@" >"$sim" 2>>"$NT_TMP/simulate.log" || rc=$?
        times >"$sim.times"
        exit "$rc"
    ) &
    pid=$!
    NT_BG_PIDS+=("$pid")
    if [[ -n $COLLECT_DURING ]]; then
        "$COLLECT_DURING" "$cpid" "$t0"
    fi
    collect__wait_committed "$pid" "$sim" "$base" "$prefix" "$(f "$t0 + 600 + $events / ($rate > 0 ? $rate : 1e9)")"
    t1=$(now_s)
    cpu1=$(collect__cpu "$cpid" "$bpid" "${pgp[@]}")
    st1=$(stage_snapshot bench)
    m1=$(machine_busy_s)
    if [[ $PERF == 1 && $key != soak ]]; then
        perf_stop "$prefix"
    fi
    collect__figures "$key" "$prefix" "$sim" "$t0" "$t1" "$m1 - $m0" "$cpu0" "$cpu1"
    stage_figures "$key" "${R[${key}_events]}" "$st0" "$st1"
}

# collect__cpu COLLECTOR_PID BROKER_PID PG_PID...: "collector broker postgres" CPU seconds.
collect__cpu() {
    local c b
    c=$(cpu_s "$1")
    b=$(cpu_s "$2")
    shift 2
    printf '%s %s %s\n' "$c" "$b" "$(cpu_s "$@")"
}

# collect__wait_committed SIM_PID SIM_JSON BASE PREFIX DEADLINE [COLLECTOR...]: waits for
# simulate, then until the collectors' committed-events counters (bench by default; summed) have
# grown by simulate's expected events since BASE. Polls the counters (cheap); the run's end time
# itself comes from the commit timestamps (collect__figures), so the poll interval does not blur
# the figure.
collect__wait_committed() {
    local pid=$1 sim=$2 base=$3 prefix=$4 deadline=$5 target="" v rc=0
    shift 5
    local -a names=("${@:-bench}")
    while :; do
        if [[ -z $target ]] && nt_pid_dead "$pid"; then
            wait "$pid" || rc=$?
            ((rc == 0)) || nt_fail "needletrace simulate failed (exit $rc)"
            target=$((base + $(jq -r .expected.events "$sim")))
        fi
        v=$(collect__committed "${names[@]}") || v=$base
        if [[ -n $target ]] && ((v >= target)); then
            break
        fi
        if cond "$(now_s) > $deadline"; then
            nt_fail "the collector committed $((v - base)) events of the $prefix run by the deadline (600 s after simulate's planned end)"
        fi
        sleep 0.2
    done
}

# collect__committed COLLECTOR...: the sum of their needletrace_db_events_total; fails when one
# cannot be read.
collect__committed() {
    local name v sum=0
    for name in "$@"; do
        v=$(metric db_events_total "$name") || return 1
        sum=$((sum + v))
    done
    printf '%s\n' "$sum"
}

# collect__figures KEY PREFIX SIM_JSON T0 T1 MACHINE_CPU_EXPR CPU0 CPU1 [LABEL]: checks that the
# run's rows are exactly simulate's expected events and stores the run's figures in R[KEY_*];
# LABEL names the collector's CPU share ("collector" by default).
collect__figures() {
    local key=$1 prefix=$2 sim=$3 t0=$4 t1=$5 machine=$6 label=${9:-collector} row wall c_sim c_c c_b c_p
    local c0 b0 p0 c1 b1 p1
    read -r c0 b0 p0 <<<"$7"
    read -r c1 b1 p1 <<<"$8"
    row=$(nt_sql "SELECT count(*), extract(epoch FROM max(pg_xact_commit_timestamp(xmin)))
                    FROM needletrace.events WHERE clinic_id LIKE '$prefix-%'")
    R[${key}_events]=${row%%|*}
    [[ ${R[${key}_events]} == "$(jq -r .expected.events "$sim")" ]] ||
        nt_fail "$prefix run: events table holds ${R[${key}_events]} rows, simulate expected $(jq -r .expected.events "$sim")"
    R[${key}_s]=$(f "${row##*|} - $t0" 3)
    R[${key}_msgs]=$(jq -r .messages_published "$sim")
    R[${key}_pub_s]=$(jq -r .elapsed_s "$sim")
    R[${key}_sim_rate]=$(jq -r .rate_msgs_per_s "$sim")
    wall=$(f "$t1 - $t0" 3)
    c_sim=$(times_s "$sim.times")
    c_c="$c1 - $c0" c_b="$b1 - $b0" c_p="$p1 - $p0"
    R[${key}_cpu]="simulate $(pct "$c_sim" "$wall"), $label $(pct "$c_c" "$wall"), mosquitto $(pct "$c_b" "$wall"), postgres $(pct "$c_p" "$wall"); $(others "$machine - $c_sim - ($c_c) - ($c_b) - ($c_p)" "$wall")"
    R[${key}_us_collector]=$(f "($c_c) * 1e6 / ${R[${key}_events]}" 2)
    R[${key}_us_postgres]=$(f "($c_p) * 1e6 / ${R[${key}_events]}" 2)
    R[${key}_us_mosquitto]=$(f "($c_b) * 1e6 / ${R[${key}_events]}" 2)
    R[${key}_us_simulate]=$(f "($c_sim) * 1e6 / ${R[${key}_events]}" 2)
}

# ---- (e) peak RSS ----------------------------------------------------------------------------
# phase_rss: the collector's peak and current RSS and its counters; then stops it.
phase_rss() {
    local cpid
    cpid=$(nt_collector_pid bench)
    R[rss_kb]=$(awk '/^VmHWM:/ { print $2 }' "/proc/$cpid/status")
    R[rss_now_kb]=$(awk '/^VmRSS:/ { print $2 }' "/proc/$cpid/status")
    R[syncs]=$(metric journal_syncs_total)
    R[batches]=$(metric db_batches_total)
    R[received]=$(metric mqtt_messages_received_total)
    R[committed_events]=$(metric db_events_total)
    bench_stop_collector bench
}
